"""A pool of identical workers; each call goes to the least busy live one."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

from .link import WorkerLink


class WorkerPool:
    def __init__(self, processes: Sequence[WorkerLink]):
        self.processes = list(processes)
        self._turn = itertools.count()

    async def start(self) -> None:
        await asyncio.gather(*(process.start() for process in self.processes))

    async def stop(self) -> None:
        await asyncio.gather(*(process.stop() for process in self.processes))

    def pick(self) -> WorkerLink:
        """The live process with the fewest calls in flight (ties rotate); any process if none is live
        (its `wait_ready` waits for its restart)."""
        return self._least_busy([process for process in self.processes if not process.is_down()] or self.processes)

    def _least_busy(self, workers: list[WorkerLink]) -> WorkerLink:
        offset = next(self._turn) % len(workers)
        rotated = workers[offset:] + workers[:offset]
        return min(rotated, key=lambda worker: worker.in_flight)
