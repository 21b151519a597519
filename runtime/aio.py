"""Bridges between asyncio and the rest: sync iterators run off the loop, and streams of requests
answered concurrently. Used on both sides of the router ↔ worker socket."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

from .errors import DeadlineExceeded

STALL_TIMEOUT = float(os.environ.get("SERVEGRAPH_STREAM_STALL_TIMEOUT", "60"))
"""Seconds a sync generator waits for its stream's reader to make room before it is stopped: a client
that stops reading without cancelling must not hold the model's thread (a worker's only one) for ever."""
Request = TypeVar("Request")
Answer = TypeVar("Answer")


class ChunkPump:
    """A sync iterator run ahead of its consumer on `executor`'s thread, as an async iterator.

    The one way servegraph runs a sync generator (a step, a model's token stream) off the event loop.
    With `coalesce`, text chunks the consumer has not read yet merge into one (a slow reader of a
    token stream must neither stall generation nor queue without bound); other chunks wait for room
    (`max_pending`), for `STALL_TIMEOUT` seconds at most: then the iterator is closed and the stream
    fails with DEADLINE_EXCEEDED. When the consumer goes away the iterator is closed between two
    chunks, which stops generation. The loop is woken once per batch of chunks, not per chunk: a
    wake-up from another thread costs more than handing over a small chunk.
    """

    def __init__(
        self, chunks: Iterator[Any], executor: Executor | None = None, *, coalesce: bool = False, max_pending: int = 64
    ):
        self._chunks = chunks
        self._executor = executor
        self._coalesce = coalesce
        self._max_pending = max_pending
        self._items: deque[Any] = deque()
        self._lock = threading.Condition()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None

    def _produce(self) -> None:
        """On the executor's thread: run the generator, handing chunks over as they come."""
        try:
            for chunk in self._chunks:
                with self._lock:
                    if self._stopped:
                        break
                    if self._coalesce and isinstance(chunk, str) and self._items and isinstance(self._items[-1], str):
                        self._items[-1] += chunk
                        continue
                    if not self._lock.wait_for(self._room, STALL_TIMEOUT):
                        raise DeadlineExceeded(
                            f"the stream's reader took nothing for {STALL_TIMEOUT:g}s: stopped to free its thread"
                        )
                    if self._stopped:
                        break
                    self._items.append(chunk)
                    first = len(self._items) == 1  # the consumer took everything before: it needs waking
                if first:
                    self._loop.call_soon_threadsafe(self._wake.set)
        except BaseException as error:
            self._error = error
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            with self._lock:
                self._done = True
            self._loop.call_soon_threadsafe(self._wake.set)

    def _room(self) -> bool:
        return len(self._items) < self._max_pending or self._stopped

    async def __aiter__(self) -> AsyncIterator[Any]:
        batches = self.batches()
        try:
            async for items in batches:
                for item in items:
                    yield item
        finally:  # now, not when collected: stopping the producer is what stops generation
            await batches.aclose()  # type: ignore[attr-defined]

    async def batches(self) -> AsyncIterator[list[Any]]:
        """The chunks in lists of those ready together (a worker sends each list as one message)."""
        self._loop.run_in_executor(self._executor, self._produce)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                with self._lock:
                    items, done = list(self._items), self._done
                    self._items.clear()
                    self._lock.notify_all()
                if items:
                    yield items
                if done:
                    break
            if self._error is not None:
                raise self._error
        finally:
            with self._lock:
                self._stopped = True
                self._lock.notify_all()


async def answer_concurrently(
    requests: AsyncIterator[Request], answer: Callable[[Request], AsyncIterator[Answer]]
) -> AsyncIterator[list[Answer]]:
    """Start `answer` for each request as it arrives; yield what they produce, in the order produced.

    Items come in lists of those that were ready together, so a caller that can send several in one
    message does (one item a list when the answers come one at a time). Ends when the requests end
    and every answer has finished; closing it cancels what still runs. `answer` must not raise:
    failures are answers too (V2 streams and worker calls report them in-band). An exception from
    `requests` (a message that does not parse) is raised here, once the answers ready by then are out.
    """
    ready: list[Answer] = []
    wake = asyncio.Event()
    running: set[asyncio.Task[None]] = set()

    async def forward(request: Request) -> None:
        async for item in answer(request):
            ready.append(item)
            wake.set()

    async def read() -> None:
        try:
            async for request in requests:
                task = asyncio.create_task(forward(request))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        finally:  # also when `requests` raises: the loop below must see the reader done
            wake.set()

    reader = asyncio.create_task(read())
    try:
        while True:
            await wake.wait()
            wake.clear()
            if ready:
                batch = ready.copy()
                ready.clear()
                yield batch
            if reader.done() and not ready:
                break
        await reader  # raises what reading `requests` raised
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
