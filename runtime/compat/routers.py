"""MLRun's router classes: how a RouterStep given ``class_name=`` answers an event from its routes.

The engine runs them (`engine.nodes.RouterNode`): it builds the class with its routes, each a `Route`
whose ``await run(event)`` returns that route's output body, and awaits ``run_event(event)`` for the
router step's output. Subclasses override MLRun's hooks (``preprocess(event)``, ``postprocess(event)``,
``merger``, ``logic``) as in MLRun.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from ..dsl.event import Event

logger = logging.getLogger("servegraph.routers")


class Route(Protocol):
    """A route as a router class sees it."""

    name: str

    async def run(self, event: Event) -> Any: ...


class BaseModelRouter:
    """What MLRun's routers share: paths under `url_prefix` (``/v2/models``), a GET on ``/`` or the health
    prefix answers the router's metadata, a str body is JSON, and any other path prefix is a ValueError."""

    def __init__(
        self,
        context: Any = None,
        name: str | None = None,
        routes: Mapping[str, Route] | None = None,
        protocol: str | None = None,
        url_prefix: str | None = None,
        health_prefix: str | None = None,
        **kwargs: Any,
    ):
        self.context = context
        self.name = name or type(self).__name__
        self.routes: dict[str, Route] = dict(routes or {})
        self.protocol = protocol or "v2"
        self.url_prefix = url_prefix or f"/{self.protocol}/models"
        self.health_prefix = health_prefix or f"/{self.protocol}/health"
        self.kwargs = kwargs

    def post_init(self, mode: str = "sync", **_: Any) -> None:
        """Called once the routes are set (MLRun's hook)."""

    def get_metadata(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "version": "v2", "extensions": []}

    def preprocess(self, event: Event) -> Event:
        return event

    def postprocess(self, event: Event) -> Event:
        return event

    async def run_event(self, event: Event) -> Any:
        """The router step's output for `event` (the engine's entry point)."""
        event = self.preprocess(event)
        if isinstance(event.body, str | bytes) and event.body and event.method != "GET":
            try:
                event.body = json.loads(event.body)
            except ValueError as exc:
                raise ValueError("Unrecognized request format") from exc
        path = event.path
        if event.method == "GET" and (path == "/" or path.startswith(self.health_prefix)):
            return self.get_metadata()
        if path != "/" and not path.startswith(self.url_prefix):
            raise ValueError(f"illegal path prefix {path}, must start with {self.url_prefix}")
        return self.postprocess(event.with_body(await self.handle(event))).body

    async def handle(self, event: Event) -> Any:
        """The output before `postprocess`: what each router class does."""
        raise NotImplementedError

    def _model_path(self, path: str) -> tuple[str, str | None]:
        """``<prefix>/<model>[/versions/<v>]/<op>`` → (``model`` or ``model:v``, ``op``); ("", "") for the
        prefix alone, ("", None) for ``/``."""
        if path == "/":
            return "", None
        segments = [part for part in path[len(self.url_prefix) :].strip("/").split("/") if part]
        if not segments:
            return "", ""
        model = segments[0]
        if len(segments) > 2 and segments[1] == "versions":
            model, segments = f"{model}:{segments[2]}", segments[2:]
        return model, "/".join(segments[1:])


class ModelRouter(BaseModelRouter):
    """MLRun's default router: one route per event, named by the path or by the body's ``"model"`` (else the
    first route); the path's operation (or the body's ``"operation"``, default ``infer``) is the path the
    route sees. The prefix alone answers ``{"models": [...]}``; an unknown model is a ValueError."""

    async def handle(self, event: Event) -> Any:
        model, operation = self._model_path(event.path)
        if operation == "" and not model:
            return {"models": list(self.routes)}
        if isinstance(event.body, dict):
            model = model or event.body.get("model", next(iter(self.routes), ""))
            operation = event.body.get("operation", operation)
        if model not in self.routes:
            raise ValueError(f"model {model} doesnt exist, available models: {' | '.join(self.routes)}")
        return await self.routes[model].run(event.with_body(event.body, path=_route_path(operation)))


def _route_path(operation: str | None) -> str:
    """The path a route sees: the operation (empty: the model decides by method), ``infer`` if none was named."""
    return "infer" if operation is None else operation


class ParallelRunnerModes(enum.StrEnum):
    """MLRun's executor types. servegraph runs the routes concurrently on the router's event loop whatever the
    type: `array` reports a failing route, `thread` and `process` log it and leave it out, as MLRun does."""

    array = "array"
    process = "process"
    thread = "thread"

    @staticmethod
    def all() -> list[ParallelRunnerModes]:
        return [ParallelRunnerModes.thread, ParallelRunnerModes.process, ParallelRunnerModes.array]


class ParallelRun(BaseModelRouter):
    """Runs every route on its own copy of the event and merges their dict results into one body (over the
    event's body with ``extend_event=True``); override ``merger(body, results)`` to merge otherwise."""

    def __init__(
        self,
        context: Any = None,
        name: str | None = None,
        routes: Mapping[str, Route] | None = None,
        extend_event: bool | None = None,
        executor_type: ParallelRunnerModes | str = ParallelRunnerModes.thread,
        **kwargs: Any,
    ):
        super().__init__(context, name, routes, **kwargs)
        self.extend_event = extend_event
        self.executor_type = ParallelRunnerModes(executor_type)

    async def handle(self, event: Event) -> Any:
        results = await self._parallel_run(event)
        body = event.body if self.extend_event and isinstance(event.body, dict) else {}
        return self.merger(body, results)

    def merger(self, body: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        for result in results.values():
            body.update(result)
        return body

    async def _parallel_run(self, event: Event) -> dict[str, Any]:
        """Each route's output by route name, in route order; each route gets its own copy of the body."""
        names = list(self.routes)
        runs = (self.routes[name].run(event.with_body(copy.deepcopy(event.body))) for name in names)
        strict = self.executor_type is ParallelRunnerModes.array
        outputs = await asyncio.gather(*runs, return_exceptions=not strict)
        results = {}
        for name, output in zip(names, outputs, strict=True):
            if isinstance(output, Exception):
                logger.error("router '%s': route '%s' failed and is left out: %r", self.name, name, output)
            else:
                results[name] = output
        return results


class VotingTypes(enum.StrEnum):
    classification = "classification"
    regression = "regression"


OPERATIONS = ("infer", "predict", "explain")


class VotingEnsemble(ParallelRun):
    """MLRun's ensemble: a path to one of its models runs that model; the ensemble's own name
    (``/v2/models/<name>/infer``), an operation alone (``/v2/models/infer``) or ``/`` runs every model and
    votes: ``{"id", "model_name": <name>, "outputs": [vote per sample]}``.

    The vote is a weighted majority (`classification`) or a weighted mean (`regression`); without
    `vote_type`, the first predictions decide (all integers: classification). `weights` maps model names to
    weights, normalized to sum 1 (a model not named weighs 0; none given: all equal). Each model's
    ``outputs`` is its list of predictions, or a dict holding them under `prediction_col_name`, in which
    case (or with ``format_response_with_col_name_flag``) the vote comes back under that key too.
    """

    def __init__(
        self,
        context: Any = None,
        name: str | None = None,
        routes: Mapping[str, Route] | None = None,
        vote_type: str | None = None,
        weights: dict[str, float] | None = None,
        executor_type: ParallelRunnerModes | str = ParallelRunnerModes.thread,
        format_response_with_col_name_flag: bool = False,
        prediction_col_name: str = "prediction",
        **kwargs: Any,
    ):
        super().__init__(context, name, routes, executor_type=executor_type, **kwargs)
        self.vote_type = VotingTypes(vote_type) if vote_type else None
        self.weights = weights
        self.format_response_with_col_name_flag = format_response_with_col_name_flag
        self.prediction_col_name = prediction_col_name or "prediction"
        self._weights: dict[str, float] = {}

    def post_init(self, mode: str = "sync", **_: Any) -> None:
        given = self.weights or dict.fromkeys(self.routes, 1.0)
        total = sum(given.values())
        self._weights = {name: given.get(name, 0.0) / total for name in self.routes}

    async def handle(self, event: Event) -> Any:
        model, operation = self._model_path(event.path)
        if operation == "" and not model:
            return {"models": [*self.routes, self.name], "weights": self.weights}
        if model in OPERATIONS and not operation:  # an operation alone: the ensemble's
            model, operation = self.name, model
        model = model or self.name
        if isinstance(event.body, dict):
            operation = event.body.get("operation", operation)
        self.validate(event.body, event.method)
        request = event.with_body(event.body, path=_route_path(operation))
        if model in self.routes:
            return await self.routes[model].run(request)
        if model != self.name:
            raise ValueError(
                f"model {model} doesnt exist, available models: {' | '.join(self.routes)} | {self.name} "
                "or an operation alone for ensemble operation"
            )
        if event.method == "GET":
            return {"name": self.name, "inputs": [], "outputs": []}
        votes: Any = self._apply_logic(await self._parallel_run(request))
        if self.format_response_with_col_name_flag:
            votes = {self.prediction_col_name: votes}
        return {"id": event.id, "model_name": self.name, "outputs": votes}

    def validate(self, request: Any, method: str) -> Any:
        """MLRun's V2 check for requests with a body: a list under ``"inputs"``."""
        if self.protocol == "v2" and method != "GET":
            if not isinstance(request, dict) or "inputs" not in request:
                raise ValueError('Expected key "inputs" in request body')
            if not isinstance(request["inputs"], list):
                raise ValueError('Expected "inputs" to be a list')
        return request

    def extract_results_from_response(self, outputs: Any) -> Any:
        """A model's predictions: its outputs, or (a dict) those under `prediction_col_name`."""
        if not isinstance(outputs, dict):
            return outputs
        self.format_response_with_col_name_flag = True
        if self.prediction_col_name not in outputs:
            raise ValueError(
                f"The given `prediction_col_name` ({self.prediction_col_name}) does not exist "
                f"in the model's response ({list(outputs)})"
            )
        return outputs[self.prediction_col_name]

    def _apply_logic(self, results: dict[str, Any]) -> list[Any]:
        predictions = [self.extract_results_from_response(result["outputs"]) for result in results.values()]
        weights = np.array([self._weights.get(name, 0.0) for name in results])
        return self.logic(np.array(predictions).T.tolist(), weights)

    def logic(self, predictions: list[list[Any]], weights: np.ndarray) -> list[Any]:
        """The vote per sample, from each sample's predictions (one per model, in `weights`' order)."""
        if self.vote_type is None:
            integral = all(float(value).is_integer() for sample in predictions for value in sample)
            self.vote_type = VotingTypes.classification if integral else VotingTypes.regression
        if self.vote_type is VotingTypes.classification:
            return [self._majority(sample, weights) for sample in predictions]
        return (np.array(predictions, dtype=float) @ weights).tolist()

    @staticmethod
    def _majority(sample: list[Any], weights: np.ndarray) -> int:
        """The class with the most weight (the smallest such class on a tie, as numpy's argmax)."""
        scores: dict[int, float] = {}
        for label, weight in zip(map(int, sample), weights, strict=True):
            scores[label] = scores.get(label, 0.0) + float(weight)
        return min(scores, key=lambda label: (-scores[label], label))
