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
import contextlib
import copy
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from .callables import Context, Mode, bind
from .errors import MaxIterationsError, NotFound, ServingError, StepError
from .event import Event, get_path, set_path, split_path
from .graph import DEFAULT_MAX_ITERATIONS, Graph
from .steps import COMPLETE, RouterStep, Step, TaskStep

logger = logging.getLogger("servegraph.engine")

STREAM_BUFFER = 64
"""Chunks a stream may run ahead of its consumer before the producing steps wait."""

_END = object()


class Node:
    """A step made ready to run: its inputs and outputs resolved, its outlets wired."""

    step_types: ClassVar[tuple[type[Step], ...]] = ()
    registry: ClassVar[list[type[Node]]] = []

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        Node.registry.append(cls)

    def __init__(self, step: Step, context: Context):
        self.name = step.name
        self.full_event = step.full_event
        self.input_path = step.input_path
        self.input_keys = split_path(step.input_path)
        self.result_keys = split_path(step.result_path)
        self.responder = step.responder
        self.streams = False
        self.select_outlets: Callable[[Any], Any] | None = None
        self.max_iterations: int | None = None
        self.outlets: list[Node] = []
        self.outlets_by_name: dict[str, Node] = {}
        self.on_error: Node | None = None

    @classmethod
    def build(cls, step: Step, context: Context) -> Node:
        for node_cls in reversed(Node.registry):
            if isinstance(step, node_cls.step_types):
                return node_cls(step, context)
        raise TypeError(f"no engine node for step kind {type(step).__name__}")

    async def start(self) -> None:
        """Acquire what the node needs (models, workers) before the graph reports ready."""

    async def stop(self) -> None:
        """Release what `start` acquired."""

    async def apply(self, event: Event) -> Any:
        """Process one event and return the new body."""
        raise NotImplementedError

    def chunks(self, event: Event) -> AsyncIterator[Any]:
        """For streaming nodes: the new bodies, one per chunk."""
        raise NotImplementedError

    def argument(self, event: Event) -> Any:
        if self.full_event:
            return event
        if self.input_keys:
            return get_path(event.body, self.input_keys, self.input_path or "")
        return event.body

    def merge(self, event: Event, result: Any, copy_body: bool = False) -> Any:
        """The body after this step: the result, or the old body with the result at result_path."""
        if isinstance(result, Event):
            return result.body
        if self.result_keys:
            body = copy.deepcopy(event.body) if copy_body else event.body
            return set_path(body, self.result_keys, result)
        return result

    def connect(self, outlets: list[Node]) -> None:
        self.outlets = outlets
        self.outlets_by_name = {node.name: node for node in outlets}


class TaskNode(Node):
    """Runs a function or a class's ``do``: sync, async, or a (sync or async) generator."""

    step_types = (TaskStep,)

    def __init__(self, step: TaskStep, context: Context):  # type: ignore[override]
        super().__init__(step, context)
        self.call = bind(step, context)
        self.streams = self.call.mode.streams
        self.select_outlets = getattr(self.call.instance, "select_outlets", None)

    async def apply(self, event: Event) -> Any:
        result = self.call.fn(self.argument(event))
        if self.call.mode is Mode.ASYNC:
            result = await result
        return self.merge(event, result)

    async def chunks(self, event: Event) -> AsyncIterator[Any]:
        produced = self.call.fn(self.argument(event))
        if self.call.mode is Mode.ASYNC_GENERATOR:
            async for chunk in produced:
                yield self.merge(event, chunk, copy_body=True)
            return
        # A sync generator never yields the loop between chunks (nothing would reach the caller before it
        # ends) and may block waiting for its next chunk (a model's token streamer): advance it in a thread.
        try:
            while (chunk := await asyncio.to_thread(next, produced, _END)) is not _END:
                yield self.merge(event, chunk, copy_body=True)
        finally:
            with contextlib.suppress(ValueError):  # still running in its thread: closed when collected
                produced.close()


class RouterNode(Node):
    """Hands each event to the route its path names (see `steps.RouterStep`)."""

    step_types = (RouterStep,)

    def __init__(self, step: RouterStep, context: Context):  # type: ignore[override]
        super().__init__(step, context)
        self.routes = {key: TaskNode(self._as_route(step, route), context) for key, route in step.routes.items()}
        self.streams = any(route.streams for route in self.routes.values())

    @staticmethod
    def _as_route(router: RouterStep, route: TaskStep) -> TaskStep:
        """The route reads and writes the body where the router step says (routes have no paths of their own)."""
        route = copy.copy(route)
        route.full_event = router.full_event
        route.input_path = router.input_path
        route.result_path = router.result_path
        return route

    def route(self, path: str) -> TaskNode:
        parts = [part for part in path.split("/") if part]
        if parts[:2] == ["v2", "models"]:
            parts = parts[2:]
        if not parts and len(self.routes) == 1:
            return next(iter(self.routes.values()))
        known = ", ".join(self.routes) or "none"
        if not parts:
            raise NotFound(f"router '{self.name}': path '{path}' names no route (routes: {known})")
        route = self.routes.get(parts[0])
        if route is None:
            raise NotFound(f"router '{self.name}' has no route '{parts[0]}' (routes: {known})")
        return route

    async def apply(self, event: Event) -> Any:
        route = self.route(event.path)
        if route.streams:
            return [chunk async for chunk in route.chunks(event)]
        return await route.apply(event)

    async def chunks(self, event: Event) -> AsyncIterator[Any]:
        route = self.route(event.path)
        if route.streams:
            async for chunk in route.chunks(event):
                yield chunk
        else:
            yield await route.apply(event)


class _Call:
    """What one request collects: its response, or the queue its chunks stream through."""

    __slots__ = ("chunks", "error", "queue", "responded", "response")

    def __init__(self, collect: bool = False, queue: asyncio.Queue[Any] | None = None):
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
    """Runs a validated Graph: ``await start()``, then `run` or `stream` events, then ``await stop()``."""

    def __init__(self, graph: Graph, *, context: Context | None = None):
        graph.validate()
        self.graph = graph
        self.context = context or Context(graph.name)
        self.nodes: dict[str, Node] = {}
        self.handlers: dict[str, Node] = {}
        self.roots: list[Node] = []
        self.streaming = False
        self.ready = False

    async def start(self) -> None:
        graph, context = self.graph, self.context
        self.nodes = {name: Node.build(step, context) for name, step in graph.steps.items()}
        self.handlers = {name: Node.build(step, context) for name, step in graph.error_handlers.items()}
        for name, outlets in graph.outlets().items():
            self.nodes[name].connect([self.nodes[outlet] for outlet in outlets])
        for name, handler in self.handlers.items():
            handler.connect([self.nodes[target] for target in graph.error_handlers[name].before])
            handler.responder = not handler.outlets
        graph_handler = self.handlers.get(graph.on_error) if graph.on_error else None
        for name, node in self.nodes.items():
            step = graph.steps[name]
            node.on_error = self.handlers[step.on_error] if step.on_error else graph_handler
        for node in self._in_cycles():
            step = graph.steps[node.name]
            node.max_iterations = step.max_iterations or graph.max_iterations or DEFAULT_MAX_ITERATIONS
        self.roots = [self.nodes[name] for name in graph.roots()]
        self.streaming = any(node.streams for node in self.nodes.values())
        started: list[Node] = []
        try:
            for node in [*self.nodes.values(), *self.handlers.values()]:
                await node.start()
                started.append(node)
        except BaseException:
            for node in reversed(started):
                await node.stop()
            raise
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for node in [*self.nodes.values(), *self.handlers.values()]:
            try:
                await node.stop()
            except Exception:
                logger.exception("stopping step '%s' failed", node.name)

    # -- requests -------------------------------------------------------------------------------
    async def run(self, event: Event) -> Any:
        """The response to one event: the responder's output (a list of chunks for a streaming
        graph), or ``{"id": ...}`` when no step responds. Raises `ServingError` on failure."""
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
                if node.streams:
                    chunks = node.chunks(event)
                else:
                    event.body = await node.apply(event)
                    outlets = await self._select(node, event, call)
            except Exception as exc:
                node, event = self._recover(node, event, exc)
                continue
            if node.streams:
                await self._each_chunk(node, chunks, event, call)
                return
            if len(outlets) == 1:
                node = outlets[0]
            elif outlets:
                await self._fan_out(outlets, event, call)
                return
            else:
                return

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

    def describe_endpoints(self) -> list[dict[str, Any]]:
        """Model endpoints served by this graph (routes now; model runners add theirs)."""
        endpoints = []
        for node in self.nodes.values():
            if isinstance(node, RouterNode):
                for key in node.routes:
                    endpoints.append({"name": key, "step": node.name, "kind": "route"})
        return endpoints
