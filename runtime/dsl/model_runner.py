"""The ModelRunnerStep and its endpoints: models, shared-model proxies, selectors (MLRun's names).

A model endpoint is declared here; `hosting.ModelHub` places its model when the graph starts, in
the router (naive, asyncio, thread_pool) or in worker processes (process_pool, dedicated_process).
Shared models are declared on the graph and reached through proxies.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import GraphError
from ..imports import object_path, resolve
from ..models.artifacts import ModelArtifact, as_artifact
from ..models.base import Model
from ..models.spec import EXECUTION_MECHANISMS, ModelSpec
from .steps import Step


class EndpointName(str):
    """An endpoint's name that also carries its labels and model class, for selectors."""

    labels: dict[str, Any]
    model_class: str
    execution_mechanism: str

    @property
    def name(self) -> str:
        return str(self)


class ModelSelector:
    """Chooses which of a ModelRunnerStep's models run for an event.

    `select` gets the event (``.body``, ``.id``, ``.path``, ``.headers``, as in MLRun) and the endpoint
    names (strings that also carry ``labels``) and returns names to run, or None for all; an empty list
    runs none.
    """

    def select(self, event: Any, available_models: list[EndpointName]) -> Iterable[str] | None:
        return None


class ModelRunnerSelector:
    """Chooses per event the models of a ModelRunnerStep and the steps after it (MLRun's ModelRunnerSelector).

    `select_models` gets the event and the endpoint names and returns names to run (None: all);
    `select_outlets` gets the runner's output body and returns the next steps' names, or "Complete"
    (None: every outlet).
    """

    def select_models(self, event: Any, available_models: list[EndpointName]) -> Iterable[str] | None:
        return None

    def select_outlets(self, event: Any) -> Iterable[str] | None:
        return None


@dataclass
class Endpoint:
    """A model endpoint of a ModelRunnerStep: its own model, or a proxy to a shared model."""

    name: str
    model: ModelSpec | None = None
    shared_model_name: str | None = None
    model_artifact: ModelArtifact | None = None
    inputs: list[Any] | None = None
    outputs: list[Any] | None = None
    input_path: str | None = None
    result_path: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.model.to_dict() if self.model else {"shared_model_name": self.shared_model_name}
        if self.model is None and self.model_artifact is not None:
            spec["model_artifact"] = self.model_artifact.to_dict()
        for key in ("inputs", "outputs", "input_path", "result_path", "labels"):
            if value := getattr(self, key):
                spec[key] = value
        return spec

    @classmethod
    def from_dict(cls, name: str, spec: dict[str, Any]) -> Endpoint:
        spec = dict(spec)
        options = {key: spec.pop(key) for key in ("inputs", "outputs", "input_path", "result_path") if key in spec}
        labels = spec.pop("labels", {})
        if "shared_model_name" in spec:
            artifact = ModelArtifact.from_dict(spec.get("model_artifact"))
            shared = spec["shared_model_name"]
            return cls(name, shared_model_name=shared, model_artifact=artifact, labels=labels, **options)
        return cls(name, ModelSpec.from_dict(name, spec), labels=labels, **options)


class ModelRunnerStep(Step):
    """Runs the models a selector picks for each event, concurrently, each where it runs best.

    The selector (``model_runner_selector=``) is a `ModelRunnerSelector`, which also picks the steps
    after the runner, or a `ModelSelector`: a class, an instance, or its name. ``model_selector=`` still
    works but warns (FutureWarning), as MLRun deprecates it.

    One selected model: its result is the body. Several: ``{endpoint_name: result}``. With
    ``raise_exception=False`` a failing model gives ``{"error": "Type: message"}`` instead of
    failing the event.
    """

    kind = "model_runner"

    def __init__(
        self,
        name: str | None = None,
        model_selector: Any = None,
        raise_exception: bool = True,
        model_runner_selector: Any = None,
        **options: Any,
    ):
        super().__init__(name, **options)
        if model_selector is not None and model_runner_selector is not None:
            raise GraphError(f"step '{self.name}': give model_selector or model_runner_selector, not both")
        if model_selector is not None:
            warnings.warn(
                "ModelRunnerStep(model_selector=...) is deprecated, as in MLRun: use model_runner_selector=",
                FutureWarning,
                stacklevel=2,
            )
        model_selector = model_runner_selector if model_runner_selector is not None else model_selector
        self.model_selector = model_selector
        self.raise_exception = raise_exception
        self.endpoints: dict[str, Endpoint] = {}
        self.max_processes: int | None = None
        self.max_threads: int | None = None
        if isinstance(model_selector, str):
            self.model_selector = resolve(model_selector, "model selector")

    def add_model(
        self,
        endpoint_name: str,
        model_class: Any,
        execution_mechanism: str | None = None,
        model_artifact: ModelArtifact | str | None = None,
        inputs: list[Any] | None = None,
        outputs: list[Any] | None = None,
        input_path: str | None = None,
        result_path: str | None = None,
        labels: dict[str, Any] | None = None,
        **model_parameters: Any,
    ) -> ModelRunnerStep:
        """Add a model endpoint; `model_parameters` go to the model's constructor.

        ``timeout`` (seconds) bounds each call; ``device`` (e.g. "cuda:0") picks a worker's GPU;
        ``monitoring=True`` writes a record per call.
        """
        if execution_mechanism is None:
            raise GraphError(
                f"add_model('{endpoint_name}'): execution_mechanism is required: "
                f"one of {', '.join(EXECUTION_MECHANISMS)}"
            )
        if isinstance(model_class, Model):
            model_class, model_parameters, model_artifact = from_instance(
                endpoint_name, model_class, model_parameters, model_artifact
            )
        model = ModelSpec(
            endpoint_name, model_class, execution_mechanism, as_artifact(model_artifact), model_parameters
        )
        self._add(
            Endpoint(endpoint_name, model, None, None, inputs, outputs, input_path, result_path, dict(labels or {}))
        )
        return self

    def add_shared_model_proxy(
        self,
        endpoint_name: str,
        model_artifact: ModelArtifact | str | None = None,
        shared_model_name: str | None = None,
        inputs: list[Any] | None = None,
        outputs: list[Any] | None = None,
        input_path: str | None = None,
        result_path: str | None = None,
        labels: dict[str, Any] | None = None,
    ) -> ModelRunnerStep:
        """Add an endpoint served by the graph's shared model `shared_model_name`."""
        if not shared_model_name:
            raise GraphError(f"add_shared_model_proxy('{endpoint_name}'): shared_model_name is required")
        self._add(
            Endpoint(
                endpoint_name,
                None,
                shared_model_name,
                as_artifact(model_artifact),
                inputs,
                outputs,
                input_path,
                result_path,
                dict(labels or {}),
            )
        )
        return self

    def configure_pool_resource(self, max_processes: int | None = None, max_threads: int | None = None) -> None:
        """Size the worker pool (process_pool models) and this step's thread pool."""
        self.max_processes = max_processes
        self.max_threads = max_threads

    def _add(self, endpoint: Endpoint) -> None:
        if endpoint.name in self.endpoints:
            raise GraphError(f"step '{self.name}' already has a model endpoint named '{endpoint.name}'")
        if self.graph is not None:
            self.graph._claim(self, [endpoint.name], [endpoint.shared_model_name] if endpoint.shared_model_name else [])
        self.endpoints[endpoint.name] = endpoint

    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"models": {name: endpoint.to_dict() for name, endpoint in self.endpoints.items()}}
        if self.model_selector is not None:
            selector = self.model_selector
            spec["model_runner_selector"] = selector if isinstance(selector, str) else object_path(_class_of(selector))
        if not self.raise_exception:
            spec["raise_exception"] = False
        if self.max_processes or self.max_threads:
            spec["pool"] = {"max_processes": self.max_processes, "max_threads": self.max_threads}
        return spec

    @classmethod
    def _from_spec(cls, name: str, spec: dict[str, Any]) -> Step:
        models = spec.pop("models", {})
        pool = spec.pop("pool", {})
        if "model_selector" in spec:  # written before the selector's MLRun name
            spec["model_runner_selector"] = spec.pop("model_selector")
        step = cls(name, **spec)
        for endpoint_name, endpoint in models.items():
            step._add(Endpoint.from_dict(endpoint_name, endpoint))
        step.configure_pool_resource(**pool)
        return step


def from_instance(
    name: str, model: Model, parameters: dict[str, Any], artifact: ModelArtifact | str | None
) -> tuple[type, dict[str, Any], ModelArtifact | str | None]:
    """A model given as an instance (MLRun's ``add_model(model_class=MyModel(name=..., inc=1))``): its class
    and the keyword arguments it was built with, so each process that hosts it builds its own."""
    args, kwargs = model.init_arguments
    if parameters or args:
        raise GraphError(
            f"add_model('{name}'): a model object comes with its own arguments, by keyword only; "
            "pass model parameters to add_model with a model class instead"
        )
    if model.name != name:
        raise GraphError(f"add_model('{name}'): Inconsistent name for model added to ModelRunnerStep ('{model.name}')")
    kwargs = {key: value for key, value in kwargs.items() if key != "name"}
    return type(model), kwargs, kwargs.pop("model_artifact", None) or artifact


def _class_of(obj: Any) -> type:
    return obj if inspect.isclass(obj) else type(obj)


@dataclass
class SharedModel:
    """A model declared once on the graph (`add_shared_model`) and used through proxies."""

    model: ModelSpec
    input_path: str | None = None
    result_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        spec = self.model.to_dict()
        for key in ("input_path", "result_path"):
            if value := getattr(self, key):
                spec[key] = value
        return spec

    @classmethod
    def from_dict(cls, name: str, spec: dict[str, Any]) -> SharedModel:
        spec = dict(spec)
        paths = {key: spec.pop(key) for key in ("input_path", "result_path") if key in spec}
        return cls(ModelSpec.from_dict(name, spec), **paths)
