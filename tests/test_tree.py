"""The merge tree: PySpark's treeReduce plan and the depth ``spark.tree_depth: auto`` picks by the cost model."""

import pytest

from ddrl import config as config_module, envs
from ddrl.algorithms import ppo
from ddrl.engines import tree, tree_depth
from tests.conftest import small_ppo_config

MB = 2**20


def test_the_levels_follow_pysparks_tree_aggregate():
    assert tree.levels(2, 3) == [2]
    assert tree.levels(8, 1) == [8]
    assert tree.levels(8, 2) == [8, 2]
    assert tree.levels(1000, 3) == [1000, 100, 10]


@pytest.mark.parametrize("num_tasks, depth, fan_in", [(2, 1, 2), (2, 3, 2), (8, 1, 8), (8, 2, 2), (8, 3, 4), (100, 2, 10), (1000, 3, 10)])
def test_driver_fan_in_follows_pysparks_tree_plan(num_tasks, depth, fan_in):
    assert tree.driver_fan_in(num_tasks, depth) == fan_in


@pytest.mark.parametrize(
    "num_tasks, result_bytes, limit, depth",
    [
        (8, 0.08 * MB, 300 * MB, 1),  # a CartPole MLP: the driver takes 8 small results at once
        (32, 0.08 * MB, 300 * MB, 1),
        (1000, 0.08 * MB, 300 * MB, 3),  # 1,000 results one after another cost more than two more stages
        (8, 16.8 * MB, 300 * MB, 1),  # the 2.1M-parameter PPO of part 7: 18 % overhead at depth 1, 50 % at 2
        (32, 16.8 * MB, 300 * MB, 2),  # depth 1 would collect 538 MB, over the driver's share
        (8, 80 * MB, 300 * MB, 2),  # 10M parameters: 8 x 80 MB do not fit, 2 x 80 MB do
    ],
)
def test_auto_depth_is_the_fastest_that_fits_the_driver(num_tasks, result_bytes, limit, depth):
    assert tree.auto_depth(num_tasks, result_bytes, limit) == depth
    fan_in = tree.driver_fan_in(num_tasks, depth)
    assert fan_in * result_bytes <= limit
    faster_fitting = [other for other in range(1, tree.MAX_AUTO_DEPTH + 1)
                      if tree.driver_fan_in(num_tasks, other) * result_bytes <= limit
                      and tree.merge_seconds(num_tasks, other, result_bytes) < tree.merge_seconds(num_tasks, depth, result_bytes)]
    assert faster_fitting == []


def test_a_shared_job_takes_the_deepest_asked_and_resolves_auto_from_its_runs(tmp_path):
    def run(depth, num_tasks, hidden):
        config = config_module.load(small_ppo_config(tmp_path, spark={"num_tasks": num_tasks, "tree_depth": depth}, ppo={"hidden_sizes": hidden}))
        return config, ppo.PPO(config, envs.describe(config.env))

    assert config_module.load(small_ppo_config(tmp_path)).spark.tree_depth == 2  # the tests' configs pin it
    assert config_module.load(small_ppo_config(tmp_path, spark={"tree_depth": "auto"})).spark.tree_depth == "auto"
    small, large = run("auto", 4, [8]), run("auto", 8, [1024, 1024])
    assert tree_depth([small], 300 * MB) == 1
    assert tree_depth([small, run(3, 2, [8])], 300 * MB) == 3
    # 8 results of the large model do not fit three results' bytes; the 2 of two levels do.
    result_bytes = large[1].task_result_bytes()
    assert tree_depth([large], 3 * result_bytes) == 2
    assert tree_depth([large], 9 * result_bytes) == 1
