"""The mock server: a graph running in-process on the real engine, for tests and notebooks.

Used with ``async with``, the engine runs on the caller's own loop and `atest()` calls it directly.
Used with ``with`` (or bare, like MLRun's), the engine gets an event loop of its own, so `test()`
works from plain code and `atest()` from any event loop. Where that loop runs depends on the graph:

- models in worker processes need a loop that runs between calls too (it supervises and restarts
  them and relays their output), so the loop runs in a background thread;
- otherwise `test()` runs the loop itself, in the calling thread, for the length of the call
  (calls from several threads take turns). Waking a loop in another thread costs ~100 µs on these
  machines, twenty times what the engine spends on a small flow.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from ..dsl.event import Event
from ..engine.callables import Context
from ..engine.engine import Engine
from ..errors import InvalidArgument, ServingError, StepError, describe, http_status, status_of
from ..hosting.hub import ModelHub

if TYPE_CHECKING:
    from ..dsl.graph import Graph

T = TypeVar("T")

JSON_TYPE = "application/json"


@dataclass
class MockResponse:
    """A failed request as ``test(..., silent=True)`` returns it: MLRun's HTTP-style `status_code`
    beside our status name (`code`), and the error's text as `body`."""

    status_code: int
    code: str
    body: str

    @classmethod
    def failed(cls, error: Exception) -> MockResponse:
        text = str(error) if isinstance(error, ServingError) else describe(error)
        return cls(http_status(error), status_of(error), text)


class MockServer:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.engine = Engine(graph, ModelHub(graph))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._turn = threading.Lock()  # who drives a loop that has no thread of its own

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> MockServer:
        """Start the engine on a private event loop (done by the first `test` if needed)."""
        with self._lock:
            if self._loop is not None:
                return self
            if self.engine.models.hosts_workers():
                loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"servegraph-mock-{self.graph.name}", daemon=True
                )
                thread.start()
                self._thread = thread
            else:
                loop = asyncio.new_event_loop()  # asyncio's, not uvloop's: cheaper to run call by call
            self._loop = loop
        try:
            self._on_loop(self.engine.start())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the engine (and every worker it started) and its loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None:
                return
            try:
                self._on_loop(self.engine.stop())
            finally:
                self._on_loop(_wind_down())
                self._loop = self._thread = None
                if thread is not None:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join()
                loop.close()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def context(self) -> Context:
        """The context every step gets (MLRun's ``server.context``): attributes set here reach them."""
        return self.engine.context

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
        content_type: str | None = None,
        silent: bool = False,
        method: str | None = None,
    ) -> Any:
        """Send one event and return the response, or an iterator of chunks for a streaming graph.

        A failing step raises its own exception (with a note naming the step); with ``silent=True`` a
        failed unary request returns a `MockResponse` instead. A str or bytes body is decoded as JSON the
        way MLRun's mock server does it: when it parses and no `content_type` is given, and always with
        ``application/json`` (where a body that does not parse is INVALID_ARGUMENT, HTTP 400); other
        content types keep it as it is. `method` is the event's (MLRun's default: POST with a body, GET
        without), which MLRun's model servers and routers read.
        """
        if self._loop is None and _running_loop() is not None and self.engine.ready:
            raise RuntimeError("this mock server runs on your event loop (async with): use 'await mock.atest()'")
        self.start()
        try:
            method = method or ("POST" if body is not None else "GET")
            event = Event(decode_body(body, content_type), id=event_id, path=path, headers=headers, method=method)
            if self._streams(stream):
                return self._iterate(self.engine.stream(event))
            if silent:
                return self._on_loop(self.engine.run(event))
            return self._on_loop(_unwrap(self.engine.run(event)))
        except Exception as error:
            if silent:
                return MockResponse.failed(error)
            raise

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
        return await self._on_loop_async(_unwrap(self.engine.run(event)))

    def _streams(self, stream: bool | None) -> bool:
        return self.engine.streaming if stream is None else stream

    # -- the private loop -----------------------------------------------------------------------
    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the private loop and wait for it, from code that is not on that loop."""
        assert self._loop is not None
        if self._thread is not None:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        if _running_loop() is not None:  # this thread is busy running another loop: drive ours from a helper
            with ThreadPoolExecutor(1, thread_name_prefix="servegraph-mock") as helper:
                return helper.submit(self._on_loop, coro).result()
        with self._turn:
            return self._loop.run_until_complete(coro)

    async def _on_loop_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """`_on_loop` for a caller on another event loop, which keeps running meanwhile."""
        assert self._loop is not None
        if self._thread is not None:
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))
        return await asyncio.to_thread(self._on_loop, coro)

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
        unwrapped = _unwrap_stream(chunks)
        try:
            while True:
                try:
                    yield await self._on_loop_async(_next(unwrapped))
                except StopAsyncIteration:
                    return
        finally:
            if self._loop is not None:
                await self._on_loop_async(unwrapped.aclose())  # type: ignore[attr-defined]


def decode_body(body: Any, content_type: str | None) -> Any:
    """A str or bytes body as MLRun's mock server reads it (see `MockServer.test`)."""
    if not isinstance(body, str | bytes) or (content_type and not content_type.startswith(JSON_TYPE)):
        return body
    try:
        return json.loads(body)
    except ValueError as exc:
        if content_type:
            raise InvalidArgument(f"the body is not valid JSON ({content_type}): {exc}") from None
        return body


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
    finally:  # closed early: stop the graph's stream now, not when it is collected
        await chunks.aclose()  # type: ignore[attr-defined]


def _original(failure: StepError) -> BaseException:
    error = failure.error
    error.add_note(f"raised in step '{failure.step}' of the serving graph")
    return error


async def _wind_down() -> None:
    """Cancel what is left on the loop (e.g. a stream abandoned half read) and stop its helper threads."""
    loop = asyncio.get_running_loop()
    pending = asyncio.all_tasks(loop) - {asyncio.current_task()}
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
