"""The merge tree of an iteration: PySpark's ``treeReduce`` plan for a depth, and ``spark.tree_depth: auto``, the
depth with the lowest predicted merge time under the cost model of BENCHMARKS.md part 4.

Depth never changes a result (the merge is exact), only where the bytes go.  The driver collects the tree's last
level one result after another; each inner level is one more stage whose reducers fetch their fan-in in
parallel.  So depth 1 wins while the driver can take every task's result quickly (small models, or large ones
on few tasks: a 2.1M-parameter PPO on 8 tasks spent 4.9 % of its iteration beyond the tasks' work at depth 1 and
14.6 % at depth 2, BENCHMARKS.md part 7), and inner levels pay once the driver's serial collection outgrows a
stage's fixed cost.
"""

from __future__ import annotations

import math

MAX_AUTO_DEPTH = 4

STAGE_SECONDS = 0.07
"""A stage's fixed cost: the job floor and a wave of Python tasks (part 4: 15 + 54 ms)."""
COLLECT_SECONDS_PER_BYTE = 5.2e-3 / 2**20
"""The driver fetching, unpickling and merging one result (part 4: 5.2 ms per MB)."""
SHUFFLE_SECONDS_PER_BYTE = 31.8e-3 / 2**20
"""A reducer of an inner level fetching one result through the shuffle (part 4: 31.8 ms per MB, the highest
measured; 2.7 to 31.8 in four runs)."""
DRIVER_SECONDS_PER_TASK = 2.7e-3
"""The driver's serial cost per task, whatever its bytes: scheduling it, and taking in its result where it
collects it (part 4's s, an upper bound)."""


def levels(num_tasks: int, depth: int) -> list[int]:
    """The partitions at each level of PySpark's treeAggregate for ``RDD.treeReduce(depth)``, from the tasks to
    the level the driver collects (the Connect engine's grouped merge follows the same plan)."""
    plan, partitions = [num_tasks], float(num_tasks)
    scale = max(int(math.ceil(num_tasks ** (1.0 / depth))), 2)
    while partitions > scale + partitions / scale:
        partitions /= scale
        plan.append(int(partitions))
    return plan


def driver_fan_in(num_tasks: int, depth: int) -> int:
    """How many partial results reach the driver at this depth."""
    return levels(num_tasks, depth)[-1]


def merge_seconds(num_tasks: int, depth: int, result_bytes: float) -> float:
    """The predicted time the merge adds to an iteration: each inner level's stage and its largest fan-in, then
    the driver's serial collection of the last level."""
    plan = levels(num_tasks, depth)
    inner = sum(STAGE_SECONDS + math.ceil(above / below) * result_bytes * SHUFFLE_SECONDS_PER_BYTE for above, below in zip(plan, plan[1:]))
    return inner + plan[-1] * (result_bytes * COLLECT_SECONDS_PER_BYTE + DRIVER_SECONDS_PER_TASK)


def auto_depth(num_tasks: int, result_bytes: float, driver_limit_bytes: float) -> int:
    """The depth of least predicted merge time among those whose last level fits ``driver_limit_bytes``; the
    deepest considered if none fits (the result-size check then says what to change)."""
    depths = range(1, MAX_AUTO_DEPTH + 1)
    fitting = [depth for depth in depths if driver_fan_in(num_tasks, depth) * result_bytes <= driver_limit_bytes]
    return min(fitting, key=lambda depth: (merge_seconds(num_tasks, depth, result_bytes), depth)) if fitting else MAX_AUTO_DEPTH
