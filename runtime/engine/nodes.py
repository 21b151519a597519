"""Steps made ready to run: the engine's nodes.

A node holds what a step needs per event (its callable, its paths, its outlets) so that running
an event does no lookups. `TaskNode` runs user code, `RouterNode` picks a route by path (or hands the
event to its router class), `MergeNode` joins branches; the model runner's node lives in `runner.py`.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..aio import ChunkPump
from ..dsl.event import Event, get_path, set_path, split_path, v2_model_path
from ..dsl.steps import Merge, RouterStep, Step, TaskStep
from ..errors import NotFound
from .callables import Context, Mode, bind, instantiate, started

logger = logging.getLogger("servegraph.engine")

PENDING = object()
"""What a node returns when the event goes no further for now (a merge waiting for the other branches)."""


class Node:
    """A step made ready to run: its inputs and outputs resolved, its outlets wired."""

    def __init__(self, step: Step, context: Context):
        self.name = step.name
        self.full_event = step.full_event
        self.input_path = step.input_path
        self.input_keys = split_path(step.input_path)
        self.result_keys = split_path(step.result_path)
        self.responder = step.responder
        self.streams = False  # always sends chunks on (a generator step)
        self.can_stream = False  # sends chunks on when the caller streams (a streaming model)
        self.select_outlets: Callable[[Any], Any] | None = None
        self.max_iterations: int | None = None
        self.outlets: list[Node] = []
        self.outlets_by_name: dict[str, Node] = {}
        self.on_error: Node | None = None

    async def apply(self, event: Event) -> Any:
        """Process one event and return the new body."""
        raise NotImplementedError

    def chunks(self, event: Event) -> AsyncIterator[Any]:
        """For streaming nodes: the new bodies, one per chunk."""
        raise NotImplementedError

    def argument(self, event: Event) -> Any:
        body = get_path(event.body, self.input_keys, self.input_path or "") if self.input_keys else event.body
        if not self.full_event:
            return body
        # With paths, a step that takes the event gets a sibling: the body it may replace is not the event's.
        return event.with_body(body) if self.input_keys or self.result_keys else event

    def merge(self, event: Event, result: Any, copy_body: bool = False) -> Any:
        """The body after this step: the result (an Event's body), or the old body with it at result_path."""
        if isinstance(result, Event):
            result = result.body
        if self.result_keys:
            return set_path(event.body, self.result_keys, result, copy=copy_body)
        return result

    def connect(self, outlets: list[Node]) -> None:
        self.outlets = outlets
        self.outlets_by_name = {node.name: node for node in outlets}


class TaskNode(Node):
    """Runs a function or a class's ``do``: sync, async, or a (sync or async) generator."""

    def __init__(self, step: TaskStep, context: Context):  # type: ignore[override]
        super().__init__(step, context)
        self.call = bind(step, context)
        self.full_event = step.full_event or self.call.takes_event
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
        # ends) and may block waiting for its next chunk: it runs in a thread.
        async for chunk in ChunkPump(produced):
            yield self.merge(event, chunk, copy_body=True)


class Route:
    """A route as a router class calls it: ``await run(event)`` is the route's output body."""

    def __init__(self, node: TaskNode):
        self.node = node
        self.name = node.name

    async def run(self, event: Event) -> Any:
        if self.node.streams:
            return [chunk async for chunk in self.node.chunks(event)]
        return await self.node.apply(event)


class RouterNode(Node):
    """Hands each event to the route its path names (see `steps.RouterStep`), or to its router class."""

    def __init__(self, step: RouterStep, context: Context):  # type: ignore[override]
        super().__init__(step, context)
        self.router: Any = None
        if step.cls is None:
            self.routes = {key: TaskNode(self._as_route(step, route), context) for key, route in step.routes.items()}
            self.streams = any(route.streams for route in self.routes.values())
            return
        # A router class reads the body at the step's input path and its output goes to the result path.
        self.routes = {key: TaskNode(route, context) for key, route in step.routes.items()}
        routes = {key: Route(node) for key, node in self.routes.items()}
        if step.instance is None:
            self.router = instantiate(step.cls, {**step.class_args, "routes": routes}, step, context)
        else:
            self.router = step.instance
            self.router.routes = routes
            self.router.context = self.router.context or context
        started(self.router)

    @staticmethod
    def _as_route(router: RouterStep, route: TaskStep) -> TaskStep:
        """The route reads and writes the body where the router step says (routes have no paths of their own)."""
        route = copy.copy(route)
        route.full_event = router.full_event
        route.input_path = router.input_path
        route.result_path = router.result_path
        return route

    def route(self, path: str) -> TaskNode:
        parts = v2_model_path(path)
        if parts is None:
            parts = [part for part in path.split("/") if part]
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
        if self.router is not None:
            argument = self.argument(event)
            request = argument if isinstance(argument, Event) else event.with_body(argument)
            return self.merge(event, await self.router.run_event(request))
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


class MergeNode(Node):
    """Joins the branches of one event (see `steps.Merge`): holds each part until all have arrived."""

    def __init__(self, step: Merge, context: Context):  # type: ignore[override]
        super().__init__(step, context)
        self.parts = step.expected_num_events or len(step.after)
        self.join_key = step.join_key
        self.max_behind = step.max_behind or 64
        self.waiting: OrderedDict[Any, list[Any]] = OrderedDict()

    async def apply(self, event: Event) -> Any:
        if self.parts <= 1:
            return event.body
        key = self.join_key(event if self.full_event else event.body)
        arrived = self.waiting.setdefault(key, [])
        arrived.append(event.body)
        if len(arrived) == self.parts:
            del self.waiting[key]
            return arrived
        if len(self.waiting) > self.max_behind:
            dropped, _ = self.waiting.popitem(last=False)
            logger.warning("merge '%s': missing parts for event key %r after a long wait, dropping", self.name, dropped)
        return PENDING
