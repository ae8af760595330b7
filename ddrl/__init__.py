"""ddrl: distributed deep reinforcement learning on Spark.

``ddrl.train(spark, config)`` trains on a SparkSession you hold; ``ddrl.sweep(spark, config, grid=...)`` trains
many trials of it in the same Spark jobs; ``ddrl.load_policy(path)`` loads a result for use without Spark;
``ddrl.score(df, policy)`` adds a policy's actions to a DataFrame.
"""

from ddrl.config import ConfigError
from ddrl.data.score import score
from ddrl.policy import Policy, load_policy
from ddrl.sweeps import SweepResult, sweep
from ddrl.trainer import TrainingError, TrainResult, train

__all__ = ["ConfigError", "Policy", "SweepResult", "TrainResult", "TrainingError", "load_policy", "score", "sweep", "train"]
