"""A pool of identical worker processes; each call goes to the least busy live one."""

from __future__ import annotations

import asyncio
import itertools

from .process import WorkerProcess


class WorkerPool:
    def __init__(self, processes: list[WorkerProcess]):
        self.processes = processes
        self._turn = itertools.count()

    async def start(self) -> None:
        await asyncio.gather(*(process.start() for process in self.processes))

    async def stop(self) -> None:
        await asyncio.gather(*(process.stop() for process in self.processes))

    def pick(self) -> WorkerProcess:
        """The live process with the fewest calls in flight (ties rotate); any process if none is live."""
        live = [process for process in self.processes if not process.is_down()] or self.processes
        offset = next(self._turn) % len(live)
        rotated = live[offset:] + live[:offset]
        return min(rotated, key=lambda process: process.in_flight)
