"""A sync generator run ahead of its consumer on a thread, merging the text the consumer has not read.

Token streams must not stall generation when the reader is slow, nor queue without bound: unread
text chunks coalesce into one, and other chunks wait for room (`max_pending`). When the consumer
goes away the generator is closed between two chunks, which stops generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from typing import Any


class ChunkPump:
    def __init__(self, chunks: Iterator[Any], executor: Executor | None, max_pending: int = 64):
        self._chunks = chunks
        self._executor = executor
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
                    if isinstance(chunk, str) and self._items and isinstance(self._items[-1], str):
                        self._items[-1] += chunk
                    else:
                        while len(self._items) >= self._max_pending and not self._stopped:
                            self._lock.wait()
                        self._items.append(chunk)
                self._loop.call_soon_threadsafe(self._wake.set)
        except BaseException as error:
            self._error = error
        finally:
            self._chunks.close()  # type: ignore[attr-defined]
            with self._lock:
                self._done = True
            self._loop.call_soon_threadsafe(self._wake.set)

    async def __aiter__(self) -> AsyncIterator[Any]:
        self._loop.run_in_executor(self._executor, self._produce)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                with self._lock:
                    items, done = list(self._items), self._done
                    self._items.clear()
                    self._lock.notify_all()
                for item in items:
                    yield item
                if done:
                    break
            if self._error is not None:
                raise self._error
        finally:
            with self._lock:
                self._stopped = True
                self._lock.notify_all()
