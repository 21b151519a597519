"""The mock server: a graph running in-process on the real engine, for tests and notebooks.

Used with ``with`` (or bare, like MLRun's), the engine lives on an event loop in a background
thread, so `test()` works from plain code and `atest()` from any event loop. Used with
``async with``, the engine runs on the caller's own loop and `atest()` calls it directly, with
no thread hand-off.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from .engine import Engine
from .errors import StepError
from .event import Event

if TYPE_CHECKING:
    from .graph import Graph

T = TypeVar("T")


class MockServer:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.engine = Engine(graph)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> MockServer:
        """Start the engine on a private event loop thread (done by the first `test` if needed)."""
        with self._lock:
            if self._loop is not None:
                return self
            loop = uvloop.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"servegraph-mock-{self.graph.name}", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.engine.start(), loop).result()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the engine (and every worker it started) and the loop thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.engine.stop(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> MockServer:
        await self.engine.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.engine.stop()

    # -- requests -------------------------------------------------------------------------------
    def test(
        self,
        path: str = "/",
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        event_id: str | None = None,
        stream: bool | None = None,
    ) -> Any:
        """Send one event and return the response, or an iterator of chunks for a streaming graph.

        A failing step raises its own exception (with a note naming the step).
        """
        if self._thread is None and _running_loop() is not None and self.engine.ready:
            raise RuntimeError("this mock server runs on your event loop (async with): use 'await mock.atest()'")
        self.start()
        event = Event(body, id=event_id, path=path, headers=headers)
        if self._streams(stream):
            return self._iterate(self.engine.stream(event))
        return self._on_loop(_unwrap(self.engine.run(event)))

    async def atest(
        self,
        path: str = "/",
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        event_id: str | None = None,
        stream: bool | None = None,
    ) -> Any:
        """`test` for async code: the response, or an async iterator of chunks."""
        event = Event(body, id=event_id, path=path, headers=headers)
        if self._loop is None:
            if not self.engine.ready:
                await self.engine.start()
            if self._streams(stream):
                return _unwrap_stream(self.engine.stream(event))
            return await _unwrap(self.engine.run(event))
        if self._streams(stream):
            return self._aiterate(self.engine.stream(event))
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_unwrap(self.engine.run(event)), self._loop))

    def _streams(self, stream: bool | None) -> bool:
        return self.engine.streaming if stream is None else stream

    # -- the loop thread ------------------------------------------------------------------------
    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, chunks: AsyncIterator[Any]) -> Iterator[Any]:
        unwrapped = _unwrap_stream(chunks)
        try:
            while True:
                try:
                    yield self._on_loop(_next(unwrapped))
                except StopAsyncIteration:
                    return
        finally:
            if self._loop is not None:
                self._on_loop(unwrapped.aclose())  # type: ignore[attr-defined]

    async def _aiterate(self, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        assert self._loop is not None
        unwrapped = _unwrap_stream(chunks)
        try:
            while True:
                future = asyncio.run_coroutine_threadsafe(_next(unwrapped), self._loop)
                try:
                    yield await asyncio.wrap_future(future)
                except StopAsyncIteration:
                    return
        finally:
            if self._loop is not None:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(unwrapped.aclose(), self._loop))  # type: ignore[attr-defined]


async def _next(chunks: AsyncIterator[Any]) -> Any:
    return await anext(chunks)


async def _unwrap(coro: Coroutine[Any, Any, T]) -> T:
    """Raise a failing step's own exception, as a caller of in-process code expects."""
    try:
        return await coro
    except StepError as failure:
        raise _original(failure) from None


async def _unwrap_stream(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for chunk in chunks:
            yield chunk
    except StepError as failure:
        raise _original(failure) from None


def _original(failure: StepError) -> BaseException:
    error = failure.error
    error.add_note(f"raised in step '{failure.step}' of the serving graph")
    return error


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
