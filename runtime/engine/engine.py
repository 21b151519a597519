"""The asyncio engine: runs events through a graph's steps, with branches, loops, streams and errors.

Every transport (the mock server, the gRPC router) runs graphs through this one class. It knows
nothing of gRPC: failures are `ServingError`s carrying a status name that transports translate.

How an event moves: it enters every root step; a step's output replaces the body and goes on to the
step's outlets (all of them, or those its ``select_outlets`` picks). A straight run of steps is a
loop, not recursion, so long cycles cost no stack; several outlets run concurrently, each on its own
copy of the event. A streaming step sends each chunk through the steps after it, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..dsl.event import Event
from ..dsl.graph import DEFAULT_MAX_ITERATIONS, Graph
from ..dsl.model_runner import ModelRunnerStep
from ..dsl.steps import COMPLETE, Merge, RouterStep, Step, TaskStep
from ..errors import MaxIterationsError, ServingError, StepError
from .callables import Context
from .nodes import PENDING, MergeNode, Node, RouterNode, TaskNode
from .runner import ModelCalls, ModelRunnerNode, Observer

if TYPE_CHECKING:
    from ..hosting.hub import ModelHub

logger = logging.getLogger("servegraph.engine")

STREAM_BUFFER = 64
"""Chunks a stream may run ahead of its consumer before the producing steps wait."""

_END = object()


class _Call:
    """What one request collects: its response, or the queue its chunks stream through."""

    __slots__ = ("chunks", "error", "queue", "responded", "response", "streaming")

    def __init__(self, collect: bool = False, queue: asyncio.Queue[Any] | None = None):
        self.streaming = queue is not None
        self.queue = queue
        self.chunks: list[Any] | None = [] if collect else None
        self.response: Any = None
        self.responded = False
        self.error: BaseException | None = None

    async def respond(self, body: Any) -> None:
        if self.queue is not None:
            await self.queue.put(body)
        elif self.chunks is not None:
            self.chunks.append(body)
        elif self.responded:
            return
        else:
            self.response = body
        self.responded = True


class Engine:
    """Runs a Graph: ``await start()``, then `run` or `stream` events, then ``await stop()``.

    It is handed its model hub (which places the models and knows the endpoints) and, when the
    graph is observed, its monitor; it builds neither.
    """

    def __init__(self, graph: Graph, models: ModelHub, *, monitor: Observer | None = None):
        self.graph = graph
        self.models = models
        self.endpoints = models.endpoints
        self.monitor = monitor
        self.context = Context(graph.name)
        self.calls = ModelCalls(monitor)
        """Calls to single model endpoints, observed: what model runners and the V2 data plane use."""
        self.nodes: dict[str, Node] = {}
        self.handlers: dict[str, Node] = {}
        self.roots: list[Node] = []
        self.sync = graph.engine == "sync"  # MLRun's sync flow: the last step's output is the response
        self.streaming = False  # some step always streams: unary calls collect the chunks
        self.can_stream = False  # some step or model streams when the caller asks for a stream
        self.ready = False

    async def start(self) -> None:
        """Place and load every model (workers start), then build the nodes."""
        await self.models.start()
        try:
            self._build()
        except BaseException:
            await self.models.stop()
            raise
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.models.stop()

    def _build(self) -> None:
        graph = self.graph
        self.nodes = {name: self._node(step) for name, step in graph.steps.items()}
        self.handlers = {name: self._node(step) for name, step in graph.error_handlers.items()}
        for name, outlets in graph.outlets().items():
            self.nodes[name].connect([self.nodes[outlet] for outlet in outlets])
        for name, handler in self.handlers.items():
            handler.connect([self.nodes[target] for target in graph.error_handlers[name].before])
            handler.responder = not handler.outlets
        graph_handler = self._handler(graph.on_error)
        for name, node in self.nodes.items():
            node.on_error = self._handler(graph.steps[name].on_error) or graph_handler
        for node in self._in_cycles():
            step = graph.steps[node.name]
            node.max_iterations = step.max_iterations or graph.max_iterations or DEFAULT_MAX_ITERATIONS
        self.roots = [self.nodes[name] for name in graph.roots()]
        self.streaming = any(node.streams for node in self.nodes.values())
        self.can_stream = self.streaming or any(node.can_stream for node in self.nodes.values())

    def _handler(self, name: str | None) -> Node | None:
        """An error handler: a declared one, or (MLRun's older form) a step of the graph named as one."""
        if name is None:
            return None
        return self.handlers.get(name) or self.nodes[name]

    def _node(self, step: Step) -> Node:
        if isinstance(step, ModelRunnerStep):
            return ModelRunnerNode(step, self.context, self.endpoints.of_step(step), self.calls)
        if isinstance(step, RouterStep):
            return RouterNode(step, self.context)
        if isinstance(step, TaskStep):
            return TaskNode(step, self.context)
        if isinstance(step, Merge):
            return MergeNode(step, self.context)
        raise TypeError(f"the engine cannot run steps of kind {type(step).__name__}")

    # -- requests -------------------------------------------------------------------------------
    async def run(self, event: Event) -> Any:
        """The response to one event: the responder's output (a list of chunks for a streaming
        graph; in a sync graph, else the last step's), or ``{"id": ...}`` when no step responds.
        Raises `ServingError` on failure."""
        call = _Call(collect=self.streaming)
        await self._enter(event, call)
        if call.chunks is not None and call.responded:
            return call.chunks
        if call.responded:
            return call.response
        return {"id": event.id}

    async def stream(self, event: Event) -> AsyncIterator[Any]:
        """The responder's outputs, yielded as they are produced (one item for unary graphs)."""
        queue: asyncio.Queue[Any] = asyncio.Queue(STREAM_BUFFER)
        call = _Call(queue=queue)

        async def produce() -> None:
            try:
                await self._enter(event, call)
                if not call.responded:
                    await queue.put({"id": event.id})
            except Exception as exc:
                call.error = exc
            await queue.put(_END)

        producer = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not _END:
                yield item
            if call.error is not None:
                raise call.error
        finally:
            if not producer.done():
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)

    # -- the flow -------------------------------------------------------------------------------
    async def _enter(self, event: Event, call: _Call) -> None:
        if len(self.roots) == 1:
            await self._flow(self.roots[0], event, call)
        else:
            await self._fan_out(self.roots, event, call)

    async def _flow(self, node: Node, event: Event, call: _Call) -> None:
        while True:
            try:
                if node.max_iterations is not None:
                    count = event.iterations.get(node.name, 0)
                    if count >= node.max_iterations:
                        raise MaxIterationsError(node.name, event.id)
                    event.iterations[node.name] = count + 1
                streams = node.streams or (node.can_stream and call.streaming)
                if streams:
                    chunks = node.chunks(event)
                elif self.monitor is None:
                    event.body = await node.apply(event)
                else:
                    event.body = await self._timed(node, event)
                if event.body is PENDING:
                    return
                if not streams:
                    outlets = await self._select(node, event, call)
            except Exception as exc:
                node, event = self._recover(node, event, exc)
                continue
            if streams:
                await self._each_chunk(node, chunks, event, call)
                return
            if len(outlets) == 1:
                node = outlets[0]
            elif outlets:
                await self._fan_out(outlets, event, call)
                return
            else:
                if self.sync:
                    await call.respond(event.body)
                return

    async def _timed(self, node: Node, event: Event) -> Any:
        started = time.perf_counter()
        try:
            body = await node.apply(event)
        except Exception:
            self.monitor.step(node.name, time.perf_counter() - started, failed=True)  # type: ignore[union-attr]
            raise
        self.monitor.step(node.name, time.perf_counter() - started, failed=False)  # type: ignore[union-attr]
        return body

    async def _each_chunk(self, node: Node, chunks: AsyncIterator[Any], event: Event, call: _Call) -> None:
        """Send each chunk of a streaming step through the steps after it, in order."""
        try:
            while True:
                try:
                    chunk = event.with_body(await anext(chunks))
                    outlets = await self._select(node, chunk, call)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    handler, event = self._recover(node, event, exc)
                    await self._flow(handler, event, call)
                    return
                if len(outlets) == 1:
                    await self._flow(outlets[0], chunk, call)
                elif outlets:
                    await self._fan_out(outlets, chunk, call)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _select(self, node: Node, event: Event, call: _Call) -> list[Node]:
        """The outlets this output goes to; responds to the caller where this output is the answer."""
        if node.select_outlets is None:
            if node.responder:
                await call.respond(event.body)
            return node.outlets
        names = node.select_outlets(event if node.full_event else event.body)
        if names is None:
            if node.responder:
                await call.respond(event.body)
            return node.outlets
        names = [names] if isinstance(names, str) else list(names)
        complete = COMPLETE in names
        if complete or (node.responder and not names):
            await call.respond(event.body)
        selected = []
        for name in names:
            if name == COMPLETE:
                continue
            outlet = node.outlets_by_name.get(name)
            if outlet is None:
                allowed = ", ".join([*node.outlets_by_name, COMPLETE])
                raise ServingError(f"step '{node.name}' selected unknown outlet '{name}' (allowed: {allowed})")
            selected.append(outlet)
        return selected

    async def _fan_out(self, outlets: list[Node], event: Event, call: _Call) -> None:
        events = [event, *(event.branch() for _ in outlets[1:])]
        try:
            async with asyncio.TaskGroup() as group:
                for node, branch in zip(outlets, events, strict=True):
                    group.create_task(self._flow(node, branch, call))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None

    def _recover(self, node: Node, event: Event, error: Exception) -> tuple[Node, Event]:
        """Where the flow goes after `node` raised: its error handler, or the caller gets the error."""
        if node.on_error is None:
            if isinstance(error, ServingError):
                raise error
            raise StepError(node.name, error) from error
        event.error = str(error)
        event.origin_state = node.name
        logger.debug("step '%s' failed for event %s; running handler '%s'", node.name, event.id, node.on_error.name)
        return node.on_error, event

    def _in_cycles(self) -> list[Node]:
        """Nodes that can reach themselves: only these count iterations."""
        outlets = self.graph.outlets()
        looping = []
        for start in outlets:
            seen: set[str] = set()
            stack = list(outlets[start])
            while stack:
                name = stack.pop()
                if name == start:
                    looping.append(self.nodes[start])
                    break
                if name not in seen:
                    seen.add(name)
                    stack.extend(outlets[name])
        return looping
