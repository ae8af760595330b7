"""ddrl: distributed deep reinforcement learning on Spark.

``ddrl.train(spark, config)`` trains on a SparkSession you hold; ``ddrl.load_policy(path)`` loads the result
for use without Spark.
"""

from ddrl.config import ConfigError
from ddrl.policy import Policy, load_policy
from ddrl.trainer import TrainingError, TrainResult, train

__all__ = ["ConfigError", "Policy", "TrainResult", "TrainingError", "load_policy", "train"]
