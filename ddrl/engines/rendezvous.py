"""How the tasks of a barrier stage form their runs' process groups (``spark.sync: gradients``), and keep them.

Under ``gradients`` every iteration is one barrier stage: Spark starts all of its tasks at once and fails them
all when one fails.  Before its work each task joins its run's gloo group (``ddrl.collective``), its task index
as its rank, in two steps:

1. The run's tasks tell each other which group their Python worker kept from an earlier job, if it ended
   cleanly there under the same rank.
2. If every task kept the same group they go on with it; otherwise they form a new one (``ProcessGroupGloo``),
   named after this meeting.  A group is dropped the moment a task that uses it fails (its sockets close, so
   its peers fail at once instead of waiting out the timeout), and tasks that land on other workers than in
   the last job form a new one.

Where they meet (a ``Meeting``, new for every Spark job):

* **Classic sessions**: a ``TCPStore`` served by the driver's process (``DriverStore``), at the address
  executors reach the driver on (``spark.driver.host``; ``DDRL_RENDEZVOUS_HOST`` overrides it).  Each step is a
  few store round trips (tens of microseconds each).  Spark's ``BarrierTaskContext.allGather`` is not used there:
  Spark polls a barrier call's reply once a second, so every call costs about 1 s (1.00 s measured here for
  each ``allGather`` and ``barrier()``), and tasks land on other workers between jobs too often (10 of 29 jobs
  of 2 tasks, 23 of 29 of 4, measured here) to pay it only when forming a group.  A meeting serves one attempt
  of its stage: a task that finds its seat taken (Spark running the stage again after a failure) fails at
  once, and the engine runs the iteration again as a new job with a new meeting (``task_attempts``).
* **Spark Connect sessions**: the driver is the client, which executors may not reach, so the tasks meet the
  way pyspark's ``TorchDistributor`` does: one ``allGather`` per job (about 1 s) carries step 1 and the address
  where each run's rank-0 task serves the store of a new group.  Spark scopes ``allGather`` to the stage
  attempt, so its own retries are safe there.

Every wait is bounded by ``spark.sync_timeout_s``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import os
import socket
import uuid
from typing import Any, Iterator

from ddrl.collective import GlooCollective, first_line
from ddrl.engines import guard

HOST_VARIABLE = "DDRL_RENDEZVOUS_HOST"


@dataclasses.dataclass(frozen=True)
class Meeting:
    """Where one Spark job's tasks meet: its key, the driver's store (classic sessions; None: through Spark's
    ``allGather``), and how long any wait may take."""

    key: str
    store_address: tuple[str, int] | None
    timeout_s: float


class DriverStore:
    """The rendezvous store served by the driver's process for its classic engine's barrier stages."""

    def __init__(self, host: str) -> None:
        from torch.distributed import TCPStore

        self.host = host
        # Listens on every interface; executors connect to self.host.  A day's timeout: the server waits for nobody.
        self.store = TCPStore("0.0.0.0", 0, None, True, timeout=datetime.timedelta(days=1), wait_for_workers=False)

    def meeting(self, timeout_s: float) -> Meeting:
        return Meeting(uuid.uuid4().hex, (self.host, self.store.port), timeout_s)


def driver_host(spark_driver_host: str) -> str:
    """The host executors reach the driver's store at: ``DDRL_RENDEZVOUS_HOST``, else ``spark.driver.host``."""
    return os.environ.get(HOST_VARIABLE) or spark_driver_host


def spark_meeting(timeout_s: float) -> Meeting:
    """A meeting through Spark's barrier ``allGather`` (Spark Connect sessions)."""
    return Meeting(uuid.uuid4().hex, None, timeout_s)


class RendezvousFailed(RuntimeError):
    """The tasks of a run could not form their group within the meeting's timeout."""


@dataclasses.dataclass
class _Kept:
    """A group a Python worker keeps between jobs, with what its formation needs to stay alive."""

    name: str
    group: Any
    anchors: tuple[Any, ...]
    clean: bool


_KEPT: dict[tuple[str, int, int], _Kept] = {}
"""By (run fingerprint, rank, world size)."""
_STORE_CLIENTS: dict[tuple[str, int], Any] = {}


@contextlib.contextmanager
def joined(meeting: Meeting, run: int, rank: int, world_size: int, fingerprint: str) -> Iterator[GlooCollective]:
    """The run's collective for one task: ``run`` numbers the runs sharing the stage, ``rank`` is the task index.
    The group stays kept for the next job if the task ends cleanly, and is dropped at once if it fails."""
    key = (fingerprint, rank, world_size)
    try:
        collective = _join(meeting, run, rank, world_size, key)
    except StaleMeeting:
        raise
    except Exception as error:
        where = f" and the driver at {meeting.store_address[0]}:{meeting.store_address[1]} ({HOST_VARIABLE} sets the driver's address)" if meeting.store_address else ""
        raise guard.reported(
            f"the {world_size} tasks of a run could not form their process group (spark.sync: gradients) within "
            f"{meeting.timeout_s:g} s ({first_line(error)}): the executors must reach each other{where} over TCP; "
            "or set spark.sync: parameters"
        ) from None
    kept = _KEPT[key]
    kept.clean = False
    try:
        yield collective
    except BaseException:
        _KEPT.pop(key, None)
        collective.group = kept.group = None
        gc.collect()  # the group's last references go: its sockets close now, failing its peers' waits at once
        raise
    kept.clean = True


class StaleMeeting(RuntimeError):
    """A meeting held before: Spark runs a failed barrier stage again, with the closure of the failed attempt."""


def _join(meeting: Meeting, run: int, rank: int, world_size: int, key: tuple[str, int, int]) -> GlooCollective:
    from torch._C._distributed_c10d import PrefixStore, ProcessGroupGloo

    kept = _KEPT.get(key)
    offer = kept.name if kept is not None and kept.clean else ""
    timeout = datetime.timedelta(seconds=meeting.timeout_s)
    name = f"{meeting.key}/{run}"
    if meeting.store_address is not None:
        store = _store_client(meeting.store_address, timeout)
        if store.add(f"{name}/seat/{rank}", 1) > 1:
            raise StaleMeeting("a meeting held before (Spark ran a failed barrier stage again; ddrl runs it as a new job)")
        store.set(f"{name}/offer/{rank}", offer)
        keys = [f"{name}/offer/{peer}" for peer in range(world_size)]
        store.wait(keys, timeout)
        offers = [value.decode() for value in store.multi_get(keys)]
        group_store, anchors = (lambda: store), [store]
    else:
        offers, group_store, anchors = _meet_through_spark(run, rank, world_size, offer, timeout)
    if offer and offers == [offer] * world_size:
        return GlooCollective(kept.group, rank, world_size)
    group = ProcessGroupGloo(PrefixStore(name, group_store()), rank, world_size, timeout)
    _KEPT[key] = _Kept(name, group, tuple(anchors), clean=True)
    return GlooCollective(group, rank, world_size)


def _store_client(address: tuple[str, int], timeout: datetime.timedelta) -> Any:
    """The worker's connection to the driver's store (one per address, kept across jobs)."""
    from torch.distributed import TCPStore

    if address not in _STORE_CLIENTS:
        _STORE_CLIENTS[address] = TCPStore(address[0], address[1], None, False, timeout=timeout, wait_for_workers=False)
    client = _STORE_CLIENTS[address]
    client.set_timeout(timeout)
    return client


def _meet_through_spark(run: int, rank: int, world_size: int, offer: str, timeout: datetime.timedelta) -> tuple[list[str], Any, list[Any]]:
    """Step 1 through one ``allGather`` of the whole stage: the run's offers in rank order, and the store of a new
    group (called only if one is formed), which the run's rank-0 task serves on the socket it offered."""
    from pyspark import BarrierTaskContext
    from torch.distributed import TCPStore

    context = BarrierTaskContext.get()
    host = context.getTaskInfos()[context.partitionId()].address.rsplit(":", 1)[0]
    listening = None
    if rank == 0:
        listening = socket.socket()
        listening.bind(("", 0))
        listening.listen()
    message = {"run": run, "rank": rank, "offer": offer, "address": [host, listening.getsockname()[1]] if listening else None}
    messages = sorted((m for m in map(json.loads, context.allGather(json.dumps(message))) if m["run"] == run), key=lambda m: m["rank"])
    store_host, port = messages[0]["address"]
    anchors: list[Any] = [listening]

    def store() -> Any:
        served = TCPStore(store_host, port, None, rank == 0, timeout=timeout, wait_for_workers=False,
                          master_listen_fd=listening.fileno() if listening else None)
        anchors.append(served)
        return served

    return [m["offer"] for m in messages], store, anchors
