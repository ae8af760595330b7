"""CartPole variants that misbehave inside Spark tasks, for fault-injection tests (importable on executors)."""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path

from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from pyspark import TaskContext


def _in_task(partitions: list[int]) -> TaskContext | None:
    context = TaskContext.get()
    return context if context is not None and context.partitionId() in partitions else None


def _first_time(marker: str, partition: int) -> bool:
    """True the first time any process asks for ``marker`` and ``partition`` (it creates the file ``marker.partition``).

    A marker, not the attempt number: Spark's retried task counts its attempts, but a barrier stage that ddrl runs
    again (spark.sync: gradients) is a new job whose tasks start at attempt 0."""
    if not marker:
        raise ValueError("a fault that happens once needs a marker file")
    try:
        os.close(os.open(f"{marker}.{partition}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class FlakyCartPole(CartPoleEnv):
    """Raises in ``step`` in each of the tasks in ``fail_partitions`` once per ``marker``; their next attempts run clean.

    With ``every_attempt`` it fails on every attempt, so Spark gives up on the task.
    """

    def __init__(self, fail_partitions: list[int] = (), every_attempt: bool = False, marker: str = "", render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.fail_partitions = list(fail_partitions)
        self.every_attempt = every_attempt
        self.marker = marker

    def step(self, action):
        context = _in_task(self.fail_partitions)
        if context is not None and (self.every_attempt or _first_time(self.marker, context.partitionId())):
            raise RuntimeError(f"injected failure in partition {context.partitionId()}")
        return super().step(action)


class NaNRewardCartPole(CartPoleEnv):
    """Returns a NaN reward in the tasks in ``nan_partitions`` (their results must never reach the policy)."""

    def __init__(self, nan_partitions: list[int] = (), render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.nan_partitions = list(nan_partitions)

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        if _in_task(self.nan_partitions) is not None:
            reward = math.nan
        return observation, reward, terminated, truncated, info


class BrokenCartPole(CartPoleEnv):
    """Inside every Spark task and on every attempt, raises in ``step`` (``fail``) or returns NaN rewards (``nan``),
    whatever the partition, so a sweep's trial fails the same in a shared job and alone; the driver's env check
    runs clean."""

    def __init__(self, fail: bool = False, nan: bool = False, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.fail, self.nan = fail, nan

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        if TaskContext.get() is not None and self.fail:
            raise RuntimeError("injected failure in every task")
        if TaskContext.get() is not None and self.nan:
            reward = math.nan
        return observation, reward, terminated, truncated, info


# ---- process-level faults and faults switched from outside the config (tests/test_faults.py,
# tests/test_cluster_faults.py) ------------------------------------------------------------------------------


class _TaskStepCartPole(CartPoleEnv):
    """Counts steps since the last seeded reset: a task's rollout starts with one (the worker may cache envs)."""

    task_steps = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.task_steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.task_steps += 1
        return super().step(action)

    def _at_step(self, partitions: list[int], step: int) -> int | None:
        """The partition, where this is step ``step`` of a task in ``partitions``; else None."""
        context = _in_task(partitions)
        return context.partitionId() if context is not None and self.task_steps == step else None


class SigkillCartPole(_TaskStepCartPole):
    """SIGKILLs its own Python worker at step ``kill_at_step`` of the tasks in ``kill_partitions``, once per
    ``marker`` and partition, mid-rollout, so the task dies without a Python exception."""

    def __init__(self, kill_partitions: list[int] = (), kill_at_step: int = 10, marker: str = "", render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.kill_partitions = list(kill_partitions)
        self.kill_at_step = kill_at_step
        self.marker = marker

    def step(self, action):
        result = super().step(action)
        partition = self._at_step(self.kill_partitions, self.kill_at_step)
        if partition is not None and _first_time(self.marker, partition):
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def executor_jvm_pid(start: int | None = None) -> int | None:
    """The executor JVM above this process (``java ... CoarseGrainedExecutorBackend``), else None.

    Walks up the process tree through /proc: a Python worker's parent is PySpark's daemon, whose parent is the
    executor JVM.  In local mode the JVM above is the driver's, which has no such class: None, nothing to kill.
    """
    pid = os.getppid() if start is None else start
    while pid > 1:
        try:
            if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state is the parent's pid
    return None


class ExecutorKillerCartPole(_TaskStepCartPole):
    """SIGKILLs the executor JVM running the task, once per ``marker`` file: at step ``kill_at_step`` of the first
    attempt of a task in ``kill_partitions``.  The marker records what was killed ("killed <pid>: <cmdline>")
    or why nothing was ("no executor JVM above pid <pid>")."""

    def __init__(self, marker: str, kill_partitions: list[int] = (1,), kill_at_step: int = 10, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.marker = marker
        self.kill_partitions = list(kill_partitions)
        self.kill_at_step = kill_at_step

    def step(self, action):
        result = super().step(action)
        if self._at_step(self.kill_partitions, self.kill_at_step) is not None:
            try:
                handle = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first one kills
            except FileExistsError:
                return result
            jvm = executor_jvm_pid()
            if jvm is None:
                os.write(handle, f"no executor JVM above pid {os.getpid()}".encode())
                os.close(handle)
                return result
            command = Path(f"/proc/{jvm}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            os.write(handle, f"killed {jvm}: {command}".encode())
            os.fsync(handle)
            os.close(handle)
            os.kill(jvm, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)  # the worker's JVM is gone: nothing would read this task's result
        return result


class MarkerFailCartPole(CartPoleEnv):
    """Raises in ``step`` inside any task, on every attempt, while the file ``fail_marker`` exists.

    The switch lives outside the config, so a run that failed this way can be resumed with the same config
    once the file is gone.  Driver-side use (describe, evaluation) never fails.
    """

    def __init__(self, fail_marker: str = "", render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.fail_marker = fail_marker

    def step(self, action):
        context = TaskContext.get()
        if context is not None and self.fail_marker and os.path.exists(self.fail_marker):
            raise RuntimeError(f"injected failure while {self.fail_marker} exists (partition {context.partitionId()})")
        return super().step(action)


class UpdateKillerCartPole(CartPoleEnv):
    """SIGKILLs its own Python worker ``delay`` seconds after the first rollout round of ``rollout_steps`` vector steps
    of a new env (every vector step calls ``step`` or, after an episode's end, ``reset`` once), while its task runs
    the update: once per ``marker`` file, in the tasks of ``kill_partitions``.  Under spark.sync: gradients the
    other tasks are waiting in an all-reduce then."""

    def __init__(self, marker: str = "", kill_partitions: list[int] = (1,), rollout_steps: int = 64, delay: float = 0.03,
                 render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.marker, self.kill_partitions, self.rollout_steps, self.delay = marker, list(kill_partitions), rollout_steps, delay
        self.calls = 0

    def reset(self, *, seed=None, options=None):
        self._count_call()
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self._count_call()
        return super().step(action)

    def _count_call(self) -> None:
        self.calls += 1
        if not self.marker or _in_task(self.kill_partitions) is None or self.calls != self.rollout_steps + 1:
            return
        try:
            handle = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first one kills
        except FileExistsError:
            return
        os.write(handle, f"killed {os.getpid()}".encode())
        os.close(handle)
        threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
