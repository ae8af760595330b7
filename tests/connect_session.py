"""Runs training scenarios on one real Spark Connect session, in a process of its own (a local Connect server
will not start beside an existing SparkContext): ``python connect_session.py SCENARIOS.json REPORT.json``.

The process is meant to run with a Python that has ddrl's dependencies but not ddrl itself, and without this
checkout on PYTHONPATH: the driver imports ddrl and the tests' env modules from ``sys.path`` entries of its own,
so executors can import them only as ddrl ships itself (``addArtifacts``) and as the scenarios ship the env
module, the way a user would.  Each scenario (a run, or a sweep where it has ``sweep``) has its outcome in the report; the tests read the run
directories.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def main(scenarios_path: str, report_path: str) -> None:
    from pyspark.sql import SparkSession

    import ddrl
    from ddrl.engines import connect

    spark = SparkSession.builder.remote("local[2,2]").getOrCreate()
    spark.addArtifacts(str(HERE / "faulty_envs.py"), pyfile=True)  # the user's env module, shipped by the user
    report: dict = {"session": type(spark).__module__, "scenarios": {}}
    payload_limit = connect.PAYLOAD_LIMIT_BYTES
    for scenario in json.loads(Path(scenarios_path).read_text()):
        connect.PAYLOAD_LIMIT_BYTES = scenario.get("payload_limit_bytes", payload_limit)
        try:
            if "sweep" in scenario:
                swept = ddrl.sweep(spark, scenario["config"], out=scenario["out"], track=False, **scenario["sweep"])
                outcome = {"outcome": "swept", "trials": [trial.status for trial in swept.trials]}
            else:
                result = ddrl.train(spark, scenario["config"], run_dir=scenario.get("run_dir"), resume=scenario.get("resume"), observers=[])
                outcome = {"outcome": "trained", "iterations": result.iterations, "env_steps": result.env_steps,
                           "eval_return_mean": result.eval_return_mean, "solved": result.solved}
        except (ddrl.ConfigError, ddrl.TrainingError) as error:
            outcome = {"outcome": type(error).__name__, "message": str(error)}
        report["scenarios"][scenario["name"]] = outcome
    report["executor_ddrl"] = _executor_ddrl_location(spark)
    spark.stop()
    Path(report_path).write_text(json.dumps(report))


def _executor_ddrl_location(spark) -> str:
    """Where an executor's Python imports ddrl from."""

    def locate(batches):
        import pyarrow as pa

        import ddrl

        for _ in batches:
            yield pa.RecordBatch.from_pydict({"location": [ddrl.__file__]})

    return spark.range(0, 1, 1, 1).mapInArrow(locate, "location string").toArrow().column("location")[0].as_py()


if __name__ == "__main__":
    main(*sys.argv[1:])
