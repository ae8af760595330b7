"""The collective operations a task of a run takes part in with the run's other tasks (``spark.sync: gradients``).

An algorithm sees a ``Collective``: its rank, the world's size, a sum over the tasks and a gather in rank order.
It never sees Spark: the engines form the group from the barrier stage (``ddrl.engines.rendezvous``).  Under
``spark.sync: parameters``, and on one task, the task is ``ALONE``, a world of one whose operations change
nothing, so an algorithm's update reads the same in both modes.

gloo sums in an order fixed by the world's size and the ranks, so the same tasks give the same bits in every
run; every operation is bounded by the group's timeout (``spark.sync_timeout_s``), and a peer that dies fails
the others at once (its sockets close).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch


class Collective(Protocol):
    rank: int
    world_size: int
    seconds: float
    """Time spent in collective operations so far (waiting for the slowest task included)."""

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` by its sum over the tasks, in place; every task holds the same bits afterwards."""

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every task's ``tensor`` (same shape and dtype on each), in rank order."""


class Alone:
    """A world of one: the task is the whole run."""

    rank = 0
    world_size = 1
    seconds = 0.0

    def all_reduce(self, tensor: torch.Tensor) -> None:
        pass

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]


ALONE = Alone()


class CollectiveFailed(RuntimeError):
    """A collective operation failed: a peer died, or did not arrive within the group's timeout."""


class GlooCollective:
    """A ``Collective`` over a gloo process group of the run's tasks (``ProcessGroupGloo``)."""

    def __init__(self, group: Any, rank: int, world_size: int) -> None:
        self.group, self.rank, self.world_size = group, rank, world_size
        self.seconds = 0.0

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self._wait(lambda: self.group.allreduce([tensor]), "an all-reduce")

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._wait(lambda: self.group.allgather([gathered], [tensor]), "an all-gather")
        return gathered

    def _wait(self, operation: Any, what: str) -> None:
        started = time.perf_counter()
        try:
            operation().wait()
        except RuntimeError as error:  # gloo's: "Connection closed by peer", "Timed out waiting ..."
            message = first_line(error)
            raise CollectiveFailed(f"{what} among {self.world_size} tasks failed at rank {self.rank}: {message}") from None
        finally:
            self.seconds += time.perf_counter() - started


def first_line(error: BaseException) -> str:
    """The first line of a torch.distributed error (c10d appends a C++ stack trace to its messages)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
