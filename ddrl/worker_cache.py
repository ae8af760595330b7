"""Objects a Python worker keeps between tasks and jobs (envs, models), keyed by the run config they serve.

PySpark reuses a worker process for later tasks and jobs, so building envs once per worker and config saves
their start-up in every task.  One job may carry the tasks of several runs (a sweep's trials), so a worker
keeps the objects of the last few configs it served rather than only the last: a sweep of 16 trials would
otherwise rebuild them in nearly every task.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable

CONFIGS_KEPT = 16
"""How many configs' objects a worker keeps; the least recently used beyond that are closed."""


class WorkerCache:
    """A least-recently-used map from key to object, closing what it drops (``close(value)``)."""

    def __init__(self, close: Callable[[Any], None] = lambda value: None, size: int = CONFIGS_KEPT) -> None:
        self.close = close
        self.size = size
        self.values: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The object kept for ``key``, built by ``build()`` the first time."""
        if key in self.values:
            self.values.move_to_end(key)
            return self.values[key]
        value = self.values[key] = build()
        while len(self.values) > self.size:
            self.close(self.values.popitem(last=False)[1])
        return value

    def clear(self) -> None:
        """Close and drop everything (a cold worker)."""
        while self.values:
            self.close(self.values.popitem(last=False)[1])
