"""Scores DataFrames with saved policies on one real Spark Connect session, in a process of its own (a local
Connect server will not start beside an existing SparkContext): ``python score_connect_session.py SCENARIOS.json``.

As ``connect_session.py``, meant for a Python with ddrl's dependencies but not ddrl: executors import ddrl only
because ``ddrl.score`` ships it.  Each scenario reads its input Parquet file, scores it with its policy and writes
the result (with the client's ``toArrow``) to its output file; the last line printed is the session's module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def main(scenarios_path: str) -> None:
    from pyspark.sql import SparkSession

    import ddrl

    spark = SparkSession.builder.remote("local[2,2]").getOrCreate()
    for scenario in json.loads(Path(scenarios_path).read_text()):
        df = spark.read.parquet(scenario["input"]).repartition(2)
        pq.write_table(ddrl.score(df, scenario["policy"]).toArrow(), scenario["output"])
    print(type(spark).__module__)
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
