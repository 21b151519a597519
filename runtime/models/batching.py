"""Dynamic batching: concurrent calls of a model that defines ``predict_batch`` run together.

A call waits at most ``max_batch_delay_ms`` (counted from the oldest waiting call) for others to
fill a batch of ``max_batch_size``; a full batch goes at once. Results go back to their own callers
in order; a batch that fails fails each of its calls with the cause. A call cancelled while it
waits leaves the batch before it runs. Used where the model runs: in a worker process and in the
router's own mechanisms alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from ..errors import ServingError

if TYPE_CHECKING:
    from .hosted import HostedModel


class _Waiting:
    __slots__ = ("arrived", "body", "future")

    def __init__(self, body: Any, future: asyncio.Future[Any]):
        self.body = body
        self.future = future
        self.arrived = time.monotonic()


class Batcher:
    def __init__(self, model: HostedModel, executor: Executor | None):
        self.model = model
        self.executor = executor
        self.max_size = model.spec.max_batch_size
        self.max_delay = model.spec.max_batch_delay
        self._waiting: deque[_Waiting] = deque()
        self._full = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def submit(self, body: Any) -> Any:
        """The model's result for `body`, computed in a batch with whatever else arrives meanwhile."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(body, future))
        if len(self._waiting) >= self.max_size:
            self._full.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"batches-{self.model.spec.name}")
        return await future

    async def _run(self) -> None:
        while self._waiting:
            if len(self._waiting) < self.max_size:
                self._full.clear()
                wait = self._waiting[0].arrived + self.max_delay - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0)):
                        await self._full.wait()
            batch = [self._waiting.popleft() for _ in range(min(self.max_size, len(self._waiting)))]
            batch = [call for call in batch if not call.future.done()]  # cancelled while waiting
            if batch:
                await self._predict(batch)

    async def _predict(self, batch: list[_Waiting]) -> None:
        bodies = [call.body for call in batch]
        try:
            if self.model.batch_is_async:
                results = await self.model.predict_batch_async(bodies)
            elif self.executor is None:
                results = self.model.predict_batch(bodies)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self.executor, self.model.predict_batch, bodies)
            if len(results) != len(batch):
                raise ServingError(
                    f"model '{self.model.spec.name}': predict_batch returned {len(results)} results "
                    f"for {len(batch)} bodies"
                )
        except Exception as error:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(error)
            return
        for call, result in zip(batch, results, strict=True):
            if not call.future.done():
                call.future.set_result(result)
