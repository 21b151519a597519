"""A model loaded in this process and the one way to call it, in the router and in workers alike.

Calls go preprocess → predict → postprocess. A model streams when its `predict` (or
`predict_async`) is a generator; a unary call to a streaming model gets its chunks joined by the
model's ``join_chunks`` (a list by default). A shared model knows its proxies' artifacts from the
start, so a call names only the endpoint it came through; the model learns it (and the artifact)
when its predict takes ``endpoint`` / ``model_artifact`` keywords.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from ..errors import NotFound
from .artifacts import ModelArtifact
from .base import overrides
from .spec import ModelSpec


class HostedModel:
    def __init__(self, spec: ModelSpec, proxies: Mapping[str, ModelArtifact | None] | None = None):
        self.spec = spec
        self.proxies = dict(proxies or {})
        self.instance = spec.model_class(name=spec.name, model_artifact=spec.model_artifact, **spec.parameters)
        self.is_async = prediction_method(spec) == "predict_async"
        self.method: Callable[..., Any] = getattr(self.instance, prediction_method(spec))
        self.streams = streams(spec)
        self.takes_proxy = _accepts(self.method, "endpoint") and _accepts(self.method, "model_artifact")
        self.takes = _accepts_all(self.method)
        self.preprocess = getattr(self.instance, "preprocess", None)
        self.postprocess = getattr(self.instance, "postprocess", None)
        self.join = getattr(self.instance, "join_chunks", list)
        batch_method = getattr(self.instance, "predict_batch", None)
        self.batch_method: Callable[[list[Any]], Any] | None = batch_method if callable(batch_method) else None
        self.batch_is_async = inspect.iscoroutinefunction(batch_method)

    @property
    def batches(self) -> bool:
        """Whether calls go through ``predict_batch``: with a batch size over 1, or when it is all the model has."""
        if self.batch_method is None:
            return False
        return self.spec.max_batch_size > 1 or not overrides(self.spec.model_class, prediction_method(self.spec))

    def load(self) -> None:
        self.instance.load()

    def _arguments(self, body: Any, endpoint: str | None) -> tuple[Any, dict[str, Any]]:
        if self.preprocess is not None:
            body = self.preprocess(body)
        artifact = self.proxies.get(endpoint) if endpoint in self.proxies else None
        kwargs = {
            key: value for key, value in self.instance.predict_arguments(body, artifact).items() if self.takes(key)
        }
        if endpoint in self.proxies and self.takes_proxy:
            kwargs = {"endpoint": endpoint, "model_artifact": artifact, **kwargs}
        return body, kwargs

    def _finish(self, result: Any) -> Any:
        return self.postprocess(result) if self.postprocess is not None else result

    # -- unary --------------------------------------------------------------------------------------
    def predict(self, body: Any, endpoint: str | None = None) -> Any:
        """For sync models (call from a thread when the model is slow)."""
        body, kwargs = self._arguments(body, endpoint)
        result = self.method(body, **kwargs)
        if self.streams:
            result = self.join(list(result))
        return self._finish(result)

    async def predict_async(self, body: Any, endpoint: str | None = None) -> Any:
        body, kwargs = self._arguments(body, endpoint)
        if self.streams:
            result = self.join([chunk async for chunk in self.method(body, **kwargs)])
        else:
            result = await self.method(body, **kwargs)
        return self._finish(result)

    def predict_batch(self, bodies: list[Any]) -> list[Any]:
        """A sync ``predict_batch`` on several bodies (each pre- and postprocessed on its own)."""
        results = self.batch_method([self._arguments(body, None)[0] for body in bodies])  # type: ignore[misc]
        return [self._finish(result) for result in results]

    async def predict_batch_async(self, bodies: list[Any]) -> list[Any]:
        results = await self.batch_method([self._arguments(body, None)[0] for body in bodies])  # type: ignore[misc]
        return [self._finish(result) for result in results]

    async def operation(self, name: str, body: Any) -> Any:
        """A custom operation, ``op_<name>(body)`` on the model (sync or async)."""
        method = getattr(self.instance, f"op_{name}", None)
        if not callable(method):
            raise NotFound(f"model '{self.spec.name}' has no operation '{name}' (define op_{name})")
        result = method(body)
        return await result if inspect.isawaitable(result) else result

    # -- streaming ----------------------------------------------------------------------------------
    def stream(self, body: Any, endpoint: str | None = None) -> Iterator[Any]:
        """Chunks of a sync streaming model (postprocess runs on each chunk)."""
        body, kwargs = self._arguments(body, endpoint)
        if not self.streams:
            yield self._finish(self.method(body, **kwargs))
            return
        for chunk in self.method(body, **kwargs):
            yield self._finish(chunk)

    async def stream_async(self, body: Any, endpoint: str | None = None) -> AsyncIterator[Any]:
        body, kwargs = self._arguments(body, endpoint)
        if not self.streams:
            yield self._finish(await self.method(body, **kwargs))
            return
        async for chunk in self.method(body, **kwargs):
            yield self._finish(chunk)


def prediction_method(spec: ModelSpec) -> str:
    """``predict_async`` for the asyncio mechanism and for models that serve many calls at once on an event
    loop (``prefer_async``), else ``predict`` (`Model.cannot_serve` checks it exists)."""
    if spec.execution_mechanism == "asyncio" or spec.model_class.prefer_async:
        return "predict_async"
    return "predict"


def streams(spec: ModelSpec) -> bool:
    """Whether calls stream: the prediction method is a generator (judged from the class alone)."""
    method = getattr(spec.model_class, prediction_method(spec))
    return inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _accepts_all(fn: Callable[..., Any]) -> Callable[[str], bool]:
    """Whether `fn` takes a keyword, decided once: everything under ``**kwargs``, else its named parameters."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return lambda name: True
    names = {p.name for p in params}
    return names.__contains__
