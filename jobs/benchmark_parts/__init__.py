"""The parts of ``jobs/benchmark.py``, one module each and named after the part (its function has the same name),
with what they share (sizes, result rows, the benchmark context and its Spark session, in-process training with
probes, subprocesses) in ``common`` and the SB3 subcommands in ``sb3``."""
