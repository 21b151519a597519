"""The ModelRunnerStep at run time: select models, run them concurrently, shape the output."""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

from .callables import Context
from .errors import ModelError, ServingError, describe, status_of
from .event import Event, get_path, set_path, split_path
from .hosting import ModelHandle
from .imports import import_object
from .models import Endpoint, EndpointName, ModelArtifact, ModelRunnerStep, ModelSelector
from .monitoring import Monitor
from .nodes import Node


class _Target:
    """One endpoint, bound to the handle of the model that serves it."""

    def __init__(
        self,
        endpoint: Endpoint,
        handle: ModelHandle,
        shared_paths: tuple[str | None, str | None],
        record: bool,
    ):
        self.name = endpoint.name
        self.handle = handle
        self.labels = endpoint.labels
        self.record = record
        self.proxy = endpoint.shared_model_name is not None
        self.artifact = endpoint.model_artifact
        self.input_path = endpoint.input_path or shared_paths[0]
        self.input_keys = split_path(self.input_path)
        self.result_keys = split_path(endpoint.result_path or shared_paths[1])

    def argument(self, body: Any) -> Any:
        return get_path(body, self.input_keys, self.input_path or "") if self.input_keys else body

    def output(self, body: Any, result: Any, copy_body: bool) -> Any:
        if not self.result_keys:
            return result
        return set_path(copy.deepcopy(body) if copy_body else body, self.result_keys, result)

    def proxy_arguments(self) -> tuple[str | None, ModelArtifact | None]:
        """What tells a shared model which proxy a call came through (nothing for its own model)."""
        return (self.name, self.artifact) if self.proxy else (None, None)


class ModelRunnerNode(Node):
    step_types = (ModelRunnerStep,)

    def __init__(self, step: ModelRunnerStep, context: Context):  # type: ignore[override]
        super().__init__(step, context)
        hub = context.models
        graph = step.graph
        self.monitor: Monitor | None = context.monitor
        self.raise_exception = step.raise_exception
        self.selector = _selector(step.model_selector)
        self.targets: dict[str, _Target] = {}
        for name, endpoint in step.endpoints.items():
            if endpoint.shared_model_name is not None:
                shared = graph.shared_models[endpoint.shared_model_name]  # type: ignore[union-attr]
                record = graph.monitoring or shared.model.monitoring  # type: ignore[union-attr]
                handle = hub.handles[endpoint.shared_model_name]
                self.targets[name] = _Target(endpoint, handle, (shared.input_path, shared.result_path), record)
            else:
                record = graph.monitoring or endpoint.model.monitoring  # type: ignore[union-attr]
                self.targets[name] = _Target(endpoint, hub.handles[name], (None, None), record)
        self.available = [_endpoint_name(endpoint, graph) for endpoint in step.endpoints.values()]
        self.can_stream = any(target.handle.streams for target in self.targets.values())

    async def apply(self, event: Event) -> Any:
        body = self.argument(event)
        selected = await self._select(body)
        if len(selected) == 1:
            return self.merge(event, await self._run(selected[0], body, event.id, copy_body=False))
        results = await asyncio.gather(*(self._run(target, body, event.id, copy_body=True) for target in selected))
        return self.merge(event, {target.name: result for target, result in zip(selected, results, strict=True)})

    async def chunks(self, event: Event) -> AsyncIterator[Any]:
        """One streaming model selected: its chunks, as they come; otherwise the unary output."""
        body = self.argument(event)
        selected = await self._select(body)
        if len(selected) != 1 or not selected[0].handle.streams:
            yield await self.apply(event)
            return
        target = selected[0]
        try:
            async for chunk in self._stream(target, target.argument(body), event.id):
                yield self.merge(event, target.output(body, chunk, copy_body=True), copy_body=True)
        except Exception as error:
            if self.raise_exception:
                raise self._failure(target, error) from error
            yield self.merge(event, {"error": describe(error)}, copy_body=True)

    async def call_endpoint(self, endpoint: str, body: Any, request_id: str = "") -> Any:
        """One endpoint's model on `body`, outside the flow (V2 inference): no selection, no paths."""
        target = self.targets[endpoint]
        try:
            return await self._call(target, body, request_id)
        except Exception as error:
            raise self._failure(target, error) from error

    async def stream_endpoint(self, endpoint: str, body: Any, request_id: str = "") -> AsyncIterator[Any]:
        target = self.targets[endpoint]
        try:
            async for chunk in self._stream(target, body, request_id):
                yield chunk
        except Exception as error:
            raise self._failure(target, error) from error

    async def call_operation(self, endpoint: str, operation: str, body: Any) -> Any:
        target = self.targets[endpoint]
        try:
            return await target.handle.call(body, *target.proxy_arguments(), operation=operation)
        except Exception as error:
            raise self._failure(target, error) from error

    async def _run(self, target: _Target, body: Any, request_id: str, copy_body: bool) -> Any:
        try:
            return target.output(body, await self._call(target, target.argument(body), request_id), copy_body)
        except Exception as error:
            if self.raise_exception:
                raise self._failure(target, error) from error
            return {"error": describe(error)}

    # -- one model call, observed -------------------------------------------------------------------
    async def _call(self, target: _Target, argument: Any, request_id: str) -> Any:
        monitor = self.monitor
        if monitor is None:
            return await target.handle.call(argument, *target.proxy_arguments(), request_id=request_id)
        started = monitor.start(target.name)
        try:
            result = await target.handle.call(argument, *target.proxy_arguments(), request_id=request_id)
        except BaseException as error:
            self._observe(target, started, request_id, argument, error=error)
            raise
        self._observe(target, started, request_id, argument, result=result)
        return result

    async def _stream(self, target: _Target, argument: Any, request_id: str) -> AsyncIterator[Any]:
        monitor = self.monitor
        chunks = target.handle.stream(argument, *target.proxy_arguments(), request_id=request_id)
        if monitor is None:
            async for chunk in chunks:
                yield chunk
            return
        started, first, last = monitor.start(target.name), None, None
        try:
            async for chunk in chunks:
                first = first or time.perf_counter()
                last = chunk
                yield chunk
        except BaseException as error:
            self._observe(target, started, request_id, argument, error=error, first_chunk=first)
            raise
        self._observe(target, started, request_id, argument, result=last, first_chunk=first)

    def _observe(self, target: _Target, started: float, request_id: str, argument: Any, **outcome: Any) -> None:
        error = outcome.get("error")
        code = "OK" if error is None else "CANCELLED" if isinstance(error, asyncio.CancelledError) else status_of(error)
        self.monitor.finish(  # type: ignore[union-attr]
            target.name,
            started,
            step=self.name,
            request_id=request_id,
            inputs=argument,
            code=code,
            labels=target.labels,
            record=target.record,
            **outcome,
        )

    def _failure(self, target: _Target, error: Exception) -> ServingError:
        return ModelError(self.name, target.name, error)

    async def _select(self, body: Any) -> list[_Target]:
        if self.selector is None:
            return list(self.targets.values())
        chosen = self.selector.select(body, list(self.available))
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


def _selector(selector: Any) -> ModelSelector | None:
    if isinstance(selector, str):
        selector = import_object(selector, "model selector")
    if inspect.isclass(selector):
        selector = selector()
    return selector


def _endpoint_name(endpoint: Endpoint, graph: Any) -> EndpointName:
    name = EndpointName(endpoint.name)
    spec = endpoint.model or graph.shared_models[endpoint.shared_model_name].model
    name.labels = dict(endpoint.labels)
    name.model_class = spec.model_class.__name__
    name.execution_mechanism = spec.execution_mechanism
    return name
