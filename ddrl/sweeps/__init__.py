"""Sweeps: many trials of one config (a grid, random samples, seeds) trained together on one SparkSession, the
tasks of every live trial sharing each iteration's Spark job; with successive halving or population-based
training.  ``ddrl.sweep(spark, config, grid=..., seeds=...)``; ``jobs/sweep.py`` from the command line.

* ``ddrl.sweeps.spec``: the sweep spec and its trials, validated before Spark starts;
* ``ddrl.sweeps.driver``: the loop that steps the trials together, its barriers and resume;
* ``ddrl.sweeps.schedulers``: successive halving and PBT decisions;
* ``ddrl.sweeps.report``: the sweep table, plot and summary.
"""

from ddrl.sweeps.driver import SweepResult, TrialOutcome, sweep

__all__ = ["SweepResult", "TrialOutcome", "sweep"]
