"""The ModelRunnerStep at run time: select models, run them concurrently, shape the output.

`ModelCalls` is one call of one model endpoint, observed by the monitor and failing as a
`ModelError` that names the endpoint and its step; the runner node calls models through it, and so
does the V2 data plane (a single endpoint, outside the flow).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..dsl.event import Event, get_path, set_path, split_path
from ..dsl.model_runner import ModelRunnerSelector, ModelRunnerStep, ModelSelector
from ..errors import ModelError, ServingError, describe, status_of
from ..hosting.endpoints import ModelEndpoint
from .callables import Context
from .nodes import Node


class Observer(Protocol):
    """What the engine reports to a monitor (`serving.monitoring.Monitor`)."""

    def start(self, endpoint: ModelEndpoint) -> float: ...

    def finish(self, endpoint: ModelEndpoint, started: float, **outcome: Any) -> None: ...

    def step(self, step: str, elapsed: float, failed: bool) -> None: ...


class ModelCalls:
    def __init__(self, monitor: Observer | None):
        self.monitor = monitor

    async def call(self, endpoint: ModelEndpoint, body: Any, request_id: str = "") -> Any:
        try:
            return await self._call(endpoint, body, request_id)
        except Exception as error:
            raise ModelError(endpoint.step, endpoint.name, error) from error

    async def stream(self, endpoint: ModelEndpoint, argument: Any, request_id: str = "") -> AsyncIterator[Any]:
        handle, monitor = endpoint.handle, self.monitor
        assert handle is not None
        chunks = handle.stream(argument, endpoint.name, request_id=request_id)
        started, first, last = monitor.start(endpoint) if monitor else 0.0, None, None
        try:
            async for chunk in chunks:
                if monitor is not None:
                    first = first or time.perf_counter()
                    last = chunk
                yield chunk
        except BaseException as error:
            if monitor is not None:
                self._observe(endpoint, started, request_id, argument, error=error, first_chunk=first)
            if isinstance(error, Exception):
                raise ModelError(endpoint.step, endpoint.name, error) from error
            raise
        if monitor is not None:
            self._observe(endpoint, started, request_id, argument, result=last, first_chunk=first)

    async def operation(self, endpoint: ModelEndpoint, operation: str, body: Any) -> Any:
        """A model's custom operation ``op_<operation>(body)`` (MLRun's ``/v2/models/<name>/<op>``)."""
        try:
            return await endpoint.handle.call(body, endpoint.name, operation=operation)  # type: ignore[union-attr]
        except Exception as error:
            raise ModelError(endpoint.step, endpoint.name, error) from error

    async def _call(self, endpoint: ModelEndpoint, argument: Any, request_id: str) -> Any:
        handle, monitor = endpoint.handle, self.monitor
        assert handle is not None
        if monitor is None:
            return await handle.call(argument, endpoint.name, request_id=request_id)
        started = monitor.start(endpoint)
        try:
            result = await handle.call(argument, endpoint.name, request_id=request_id)
        except BaseException as error:
            self._observe(endpoint, started, request_id, argument, error=error)
            raise
        self._observe(endpoint, started, request_id, argument, result=result)
        return result

    def _observe(self, endpoint: ModelEndpoint, started: float, request_id: str, argument: Any, **outcome: Any) -> None:
        error = outcome.get("error")
        code = "OK" if error is None else "CANCELLED" if isinstance(error, asyncio.CancelledError) else status_of(error)
        self.monitor.finish(endpoint, started, request_id=request_id, inputs=argument, code=code, **outcome)  # type: ignore[union-attr]


class _Target:
    """One endpoint of the step, with its input and result paths resolved."""

    def __init__(self, endpoint: ModelEndpoint):
        self.endpoint = endpoint
        self.name = endpoint.name
        self.streams = endpoint.handle.streams  # type: ignore[union-attr]
        self.input_path = endpoint.input_path
        self.input_keys = split_path(endpoint.input_path)
        self.result_keys = split_path(endpoint.result_path)

    def argument(self, body: Any) -> Any:
        return get_path(body, self.input_keys, self.input_path or "") if self.input_keys else body

    def output(self, body: Any, result: Any, copy_body: bool) -> Any:
        if not self.result_keys:
            return result
        return set_path(body, self.result_keys, result, copy=copy_body)


class ModelRunnerNode(Node):
    def __init__(self, step: ModelRunnerStep, context: Context, endpoints: list[ModelEndpoint], calls: ModelCalls):
        super().__init__(step, context)
        self.calls = calls
        self.raise_exception = step.raise_exception
        self.selector = _selector(step.model_selector)
        if isinstance(self.selector, ModelRunnerSelector):
            self.select_outlets = self.selector.select_outlets
        self.targets = {endpoint.name: _Target(endpoint) for endpoint in endpoints}
        self.available = [endpoint.selector_name() for endpoint in endpoints]
        self.can_stream = any(target.streams for target in self.targets.values())

    async def apply(self, event: Event) -> Any:
        body = self.argument(event)
        selected = await self._select(event)
        if len(selected) == 1:
            return self.merge(event, await self._run(selected[0], body, event.id))
        # Each model gets a body of its own: one that changes its input in place must not change the others'.
        runs = (self._run(target, copy.deepcopy(body), event.id) for target in selected)
        results = await asyncio.gather(*runs)
        return self.merge(event, {target.name: result for target, result in zip(selected, results, strict=True)})

    async def chunks(self, event: Event) -> AsyncIterator[Any]:
        """One streaming model selected: its chunks, as they come; otherwise the unary output."""
        body = self.argument(event)
        selected = await self._select(event)
        if len(selected) != 1 or not selected[0].streams:
            yield await self.apply(event)
            return
        target = selected[0]
        try:
            async for chunk in self.calls.stream(target.endpoint, target.argument(body), event.id):
                yield self.merge(event, target.output(body, chunk, copy_body=True), copy_body=True)
        except Exception as error:
            yield self.merge(event, self._failed(target, error), copy_body=True)

    async def _run(self, target: _Target, body: Any, request_id: str) -> Any:
        try:
            result = await self.calls.call(target.endpoint, target.argument(body), request_id)
        except Exception as error:
            return self._failed(target, error)
        return target.output(body, result, copy_body=False)

    def _failed(self, target: _Target, error: Exception) -> dict[str, str]:
        """A model's failure: the event's, or (``raise_exception=False``) MLRun's ``{"error": ...}`` result."""
        failure = error if isinstance(error, ModelError) else ModelError(self.name, target.name, error)
        if self.raise_exception:
            raise failure from failure.error
        return {"error": describe(failure.error)}

    async def _select(self, event: Event) -> list[_Target]:
        """The models to run: the selector sees the whole event (body, id, path, headers), as in MLRun."""
        if self.selector is None:
            return list(self.targets.values())
        select = self.selector.select_models if isinstance(self.selector, ModelRunnerSelector) else self.selector.select
        chosen = select(event, list(self.available))
        if inspect.isawaitable(chosen):
            chosen = await chosen
        if chosen is None:
            return list(self.targets.values())
        names = [chosen] if isinstance(chosen, str) else [getattr(item, "name", item) for item in chosen]
        unknown = [name for name in names if name not in self.targets]
        if unknown:
            raise ServingError(
                f"step '{self.name}': the model selector chose unknown models {unknown} "
                f"(endpoints: {', '.join(self.targets)})"
            )
        return [self.targets[name] for name in names]


def _selector(selector: Any) -> ModelSelector | ModelRunnerSelector | None:
    if inspect.isclass(selector):
        selector = selector()
    return selector
