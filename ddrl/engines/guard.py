"""What a task runs first on an executor, before anything of ddrl is imported there.

An executor whose Python lacks ddrl's requirements (``PYSPARK_PYTHON`` unset, so Spark ran the system
``python3``; a cluster without the libraries) fails while unpickling the task, deep in a Java stack trace that
ends in "No module named 'torch'".  ``guarded`` wraps the task in a function that cloudpickle ships by value
(a closure over the pickled task), so it runs with nothing but the standard library and pyspark: it unpickles
and runs the task, and turns an ``ImportError`` into a marked line naming the module and the executor's
``sys.executable``.  ``explain`` finds that line in the error the driver receives and says what to do.
No probe job: the check costs nothing until a task fails.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from typing import Any, Callable

_MARKER = "ddrl-executor-import-failure"
_MARKED = re.compile(_MARKER + r" module=(?P<module>\S+) python=(?P<python>.+?) \| ")
_REPORTED = "ddrl-reported"
_REPORTED_LINE = re.compile(_REPORTED + r" \| (?P<message>.+?) \|")


def guarded(task: Callable[..., Any], *spark_pickled: Any, arguments: int = 1, type_hints: bool = False) -> Callable[..., Any]:
    """``task`` for Spark to ship: it takes ``arguments`` (1 or 2: Spark inspects the signature) followed by
    ``spark_pickled`` and returns the same result (an iterator's items are gathered on the executor).
    ``spark_pickled`` holds what only Spark's own pickling of the function may carry, such as a ``Broadcast``,
    whose pickling registers it with the job.  ``type_hints``: the guard carries the task's, for Spark calls that
    choose by them (``applyInArrow``: an iterator of batches, or a table); they must name no ddrl type, which the
    executor would have to import before the guard runs."""
    from pyspark import cloudpickle

    task_bytes = cloudpickle.dumps(task)

    def run(args: tuple[Any, ...]) -> Any:
        import sys as executor_sys

        try:
            from pyspark import cloudpickle as executor_cloudpickle

            # task_bytes are what this driver pickled above for this job (Spark ships and unpickles the same way);
            # nothing a user hands ddrl is ever unpickled
            result = executor_cloudpickle.loads(task_bytes)(*args, *spark_pickled)
            return iter(list(result)) if hasattr(result, "__next__") else result
        except ImportError as error:
            module = (error.name or str(error)).split(".")[0].replace(" ", "_")
            raise RuntimeError(
                f"{_MARKER} module={module} python={executor_sys.executable} | {error}"
            ) from None

    def run_one(argument):  # type: ignore[no-untyped-def]  (its hints are the task's, set below)
        return run((argument,))

    def run_two(first, second):  # type: ignore[no-untyped-def]
        return run((first, second))

    guard = run_two if arguments == 2 else run_one
    hints = typing.get_type_hints(task) if type_hints else {}
    names = zip(inspect.signature(guard).parameters, inspect.signature(task).parameters)
    guard.__annotations__ = {mine: hints[theirs] for mine, theirs in names if theirs in hints}
    if "return" in hints:
        guard.__annotations__["return"] = hints["return"]
    return guard


def reported(message: str) -> RuntimeError:
    """An error raised in a task whose ``message`` (one line, no " |") is what the driver tells the user (``explain``)."""
    return RuntimeError(f"{_REPORTED} | {message} |")


def explain(error: BaseException) -> str | None:
    """The one-line reason for a job that failed because executors could not import something, or because a task
    raised a ``reported`` error; else None."""
    text = str(error)
    said = _REPORTED_LINE.search(text)
    if said is not None:
        return said["message"]
    found = _MARKED.search(text)
    if found is None:
        return None
    module, python = found["module"], found["python"]
    return (
        f"the executors' Python ({python}) cannot import {module!r}: run executors on a Python with ddrl's "
        f"requirements, e.g. PYSPARK_PYTHON={sys.executable} (./spark-submit.sh sets it; Spark Connect servers and "
        "notebooks' local sessions take it from their own environment), install them on the cluster (%pip install "
        "in a Databricks notebook, or cluster libraries), or ship this venv with ./spark-submit.sh --ship-env"
    )


def root_cause(error: BaseException) -> str:
    """The last line of a failed job's error naming an error or exception, Java's stack frames ("at ...") aside:
    the Python error a task raised, in the failures of plain and barrier stages alike."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith("at ")]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors[-1] if errors else lines[-1] if lines else type(error).__name__)[:500]
