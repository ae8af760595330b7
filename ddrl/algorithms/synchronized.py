"""What PPO and BC share under ``spark.sync: gradients``: gradients summed over the tasks at every optimizer step,
Adam's state shipped with the parameters, normalizer moments shared in rank order, and the state every task
returns identically.

Every task of a run starts its job from the payload's parameters and Adam state.  At each optimizer step it
takes the gradient of the *sum* of its rows' losses; the tasks add theirs (``Collective.all_reduce``) and divide
by the step's row count over all tasks:

    g = (1 / sum_i n_i) * sum_i grad sum_{rows r of task i} loss_r

the gradient of the mean loss over the union of the tasks' rows, which one process with all of their envs
computes.  So every task clips by the same global norm and takes the same Adam step, and the tasks end the job
holding the same bits: the task of rank 0 returns them (``TaskOutput.replicated``), the others a digest.
Under ``parameters`` (a world of one) the same code is one process's update.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ddrl.checkpoint import State
from ddrl.collective import Collective
from ddrl.merge import digest
from ddrl.normalizer import Moments

ADAM_KEYS = ("adam_m", "adam_v", "adam_steps")
"""Adam's first and second moments (flat, float32) and each tensor's step count, in the state and the payload."""


def initial_adam_state(tensor_sizes: Sequence[int]) -> State:
    """Adam's state before the first step: zero moments, zero steps."""
    total = int(sum(tensor_sizes))
    return {"adam_m": np.zeros(total, dtype=np.float32), "adam_v": np.zeros(total, dtype=np.float32), "adam_steps": np.zeros(len(tensor_sizes))}


def load_adam(optimizer: torch.optim.Adam, parameters: Sequence[torch.nn.Parameter], shipped: dict[str, Any]) -> None:
    """Set ``optimizer``'s state to the shipped one, so that the job goes on with the run's Adam."""
    optimizer.state.clear()
    offset = 0
    for parameter, steps in zip(parameters, shipped["adam_steps"]):
        size = parameter.numel()
        optimizer.state[parameter] = {
            "step": torch.tensor(float(steps)),
            "exp_avg": torch.tensor(shipped["adam_m"][offset : offset + size]).view_as(parameter).clone(),
            "exp_avg_sq": torch.tensor(shipped["adam_v"][offset : offset + size]).view_as(parameter).clone(),
        }
        offset += size


def adam_state(optimizer: torch.optim.Adam, parameters: Sequence[torch.nn.Parameter]) -> State:
    """``optimizer``'s state as the state keeps it (``ADAM_KEYS``)."""
    states = [optimizer.state[parameter] for parameter in parameters]
    return {
        "adam_m": torch.cat([state["exp_avg"].reshape(-1) for state in states]).numpy().astype(np.float32),
        "adam_v": torch.cat([state["exp_avg_sq"].reshape(-1) for state in states]).numpy().astype(np.float32),
        "adam_steps": np.array([float(state["step"]) for state in states]),
    }


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter], collective: Collective, count: float, statistics: torch.Tensor) -> torch.Tensor:
    """Replace each gradient, of the sum of this task's losses, by the gradient of the mean loss over the step's
    ``count`` rows of every task, in one all-reduce with ``statistics`` (sums over this task's rows); returns
    those statistics' means over every task's rows.  Parameters without a gradient (outside this step's loss)
    have none on any task, and keep none."""
    with_gradient = [parameter for parameter in parameters if parameter.grad is not None]
    if collective.world_size == 1:  # nothing to add: divide in place
        for parameter in with_gradient:
            parameter.grad.div_(count)
        return statistics.float().reshape(-1) / count
    flat = torch.cat([parameter.grad.reshape(-1) for parameter in with_gradient] + [statistics.float().reshape(-1)])
    collective.all_reduce(flat)
    flat /= count
    offset = 0
    for parameter in with_gradient:
        parameter.grad.copy_(flat[offset : offset + parameter.numel()].view_as(parameter))
        offset += parameter.numel()
    return flat[offset:]


def all_reduce_sum(collective: Collective, values: Sequence[float]) -> list[float]:
    """Scalars summed over the tasks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    collective.all_reduce(tensor)
    return tensor.tolist()


def gathered_moments(collective: Collective, moments: Sequence[Moments]) -> list[list[Moments]]:
    """Every task's ``moments`` (one or more normalizers'), in rank order, in one all-gather."""
    shapes = [np.shape(one.mean) for one in moments]
    packed = torch.from_numpy(np.concatenate([np.concatenate([[one.count], np.ravel(one.mean), np.ravel(one.m2)]) for one in moments]))
    tasks = []
    for row in collective.all_gather(packed):
        values, unpacked = row.numpy(), []
        for shape in shapes:
            size = int(np.prod(shape))
            unpacked.append(Moments(float(values[0]), values[1 : 1 + size].reshape(shape).copy(), values[1 + size : 1 + 2 * size].reshape(shape).copy()))
            values = values[1 + 2 * size :]
        tasks.append(unpacked)
    return tasks


def replicated_output(collective: Collective, state: State) -> dict[str, Any]:
    """``TaskOutput``'s fields for a state every task holds identically: the arrays from rank 0, a digest from all."""
    return {"replicated": dict(state) if collective.rank == 0 else {}, "replicated_digest": digest(state)}
