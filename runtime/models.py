"""Models and the ModelRunnerStep: user base classes and declarations (MLRun's names).

A model endpoint is declared once (`ModelSpec`) and placed at start by `hosting.ModelHub`:
in the router (naive, asyncio, thread_pool) or in worker processes (process_pool,
dedicated_process). Shared models are declared on the graph and reached through proxies.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import GraphError
from .imports import import_object, is_importable, object_path
from .steps import STEP_KINDS, Step

IN_ROUTER = ("naive", "asyncio", "thread_pool")
IN_WORKERS = ("process_pool", "dedicated_process")
EXECUTION_MECHANISMS = IN_ROUTER + IN_WORKERS


class ModelArtifact:
    """Where a model's files are (`uri`) and what else describes it (`meta`)."""

    kind: ClassVar[str] = "model"

    def __init__(self, uri: str | None = None, **meta: Any):
        self.uri = uri
        self.meta = meta

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, **self.meta}

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> ModelArtifact | None:
        if data is None:
            return None
        data = dict(data)
        cls = ARTIFACT_KINDS.get(data.pop("kind", "model"), ModelArtifact)
        return cls._from_fields(data)

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> ModelArtifact:
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelArtifact) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


ARTIFACT_KINDS: dict[str, type[ModelArtifact]] = {"model": ModelArtifact}

BUILTIN_MODELS = {"LLModel": "servegraph.llm.LLModel"}
"""Model classes that may be named without their module, as in MLRun (``model_class="LLModel"``)."""


class Model:
    """Base class for models: override `load`, and `predict` and/or `predict_async`.

    A generator `predict` streams its chunks. `preprocess` and `postprocess` run around every call
    in the same process as the model. Models in worker processes are created and loaded there,
    once per process, and keep their state across calls.

    A shared model learns which proxy a call came through when its predict method takes
    ``endpoint`` and ``model_artifact`` keyword arguments.
    """

    def __init__(self, name: str | None = None, model_artifact: ModelArtifact | None = None, **parameters: Any):
        self.name = name or type(self).__name__
        self.model_artifact = model_artifact
        self.parameters = parameters

    def load(self) -> None:
        """Load weights and anything slow; runs once, where the model runs, before it is ready."""

    def predict(self, body: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    async def predict_async(self, body: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict_async()")

    def get_param(self, key: str, default: Any = None) -> Any:
        return self.parameters.get(key, default)


def overrides(model_class: type, method: str) -> bool:
    return getattr(model_class, method, None) is not getattr(Model, method, None)


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

    `select` gets the event body and the endpoint names (strings that also carry ``labels``) and
    returns names to run, or None for all; an empty list runs none.
    """

    def select(self, event: Any, available_models: list[EndpointName]) -> Iterable[str] | None:
        return None


@dataclass
class ModelSpec:
    """One model as declared: the class (by import path across processes) and how it runs."""

    name: str
    model_class: type
    execution_mechanism: str
    model_artifact: ModelArtifact | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.model_class, str):
            path = BUILTIN_MODELS.get(self.model_class, self.model_class)
            self.model_class = import_object(path, "model class")
        if not (inspect.isclass(self.model_class) and issubclass(self.model_class, Model)):
            raise GraphError(f"model '{self.name}': model_class must be a servegraph Model subclass")
        if self.execution_mechanism not in EXECUTION_MECHANISMS:
            raise GraphError(
                f"model '{self.name}': execution_mechanism {self.execution_mechanism!r} is not one of "
                f"{', '.join(EXECUTION_MECHANISMS)}"
            )
        if self.execution_mechanism == "asyncio" and not overrides(self.model_class, "predict_async"):
            raise GraphError(
                f"model '{self.name}': execution_mechanism 'asyncio' needs {self.model_class.__name__}.predict_async"
            )
        if self.execution_mechanism in IN_WORKERS:
            if not is_importable(self.model_class):
                raise GraphError(
                    f"model '{self.name}': {self.model_class.__qualname__} runs in a worker process, which imports it "
                    f"by path; define it at the top level of an importable module (not __main__)"
                )
            try:
                json.dumps(self.parameters)
            except TypeError as exc:
                raise GraphError(f"model '{self.name}': parameters must be JSON values for a worker: {exc}") from None

    @property
    def monitoring(self) -> bool:
        """``monitoring=True`` writes a record per call of this model (see monitoring.py)."""
        return bool(self.parameters.get("monitoring"))

    @property
    def timeout(self) -> float | None:
        value = self.parameters.get("timeout")
        return float(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model_class": object_path(self.model_class),
            "execution_mechanism": self.execution_mechanism,
        }
        if self.model_artifact is not None:
            spec["model_artifact"] = self.model_artifact.to_dict()
        if self.parameters:
            spec["parameters"] = dict(self.parameters)
        return spec

    @classmethod
    def from_dict(cls, name: str, spec: dict[str, Any]) -> ModelSpec:
        return cls(
            name,
            spec["model_class"],
            spec["execution_mechanism"],
            ModelArtifact.from_dict(spec.get("model_artifact")),
            dict(spec.get("parameters", {})),
        )


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
        **options: Any,
    ):
        super().__init__(name, **options)
        self.model_selector = model_selector
        self.raise_exception = raise_exception
        self.endpoints: dict[str, Endpoint] = {}
        self.max_processes: int | None = None
        self.max_threads: int | None = None
        if isinstance(model_selector, str):
            import_object(model_selector, "model selector")

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
        model = ModelSpec(endpoint_name, model_class, execution_mechanism, _artifact(model_artifact), model_parameters)
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
                _artifact(model_artifact),
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
        self.endpoints[endpoint.name] = endpoint

    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"models": {name: endpoint.to_dict() for name, endpoint in self.endpoints.items()}}
        if self.model_selector is not None:
            selector = self.model_selector
            spec["model_selector"] = selector if isinstance(selector, str) else object_path(_class_of(selector))
        if not self.raise_exception:
            spec["raise_exception"] = False
        if self.max_processes or self.max_threads:
            spec["pool"] = {"max_processes": self.max_processes, "max_threads": self.max_threads}
        return spec

    @classmethod
    def _from_spec(cls, name: str, spec: dict[str, Any]) -> Step:
        models = spec.pop("models", {})
        pool = spec.pop("pool", {})
        step = cls(name, **spec)
        for endpoint_name, endpoint in models.items():
            step._add(Endpoint.from_dict(endpoint_name, endpoint))
        step.configure_pool_resource(**pool)
        return step


def _class_of(obj: Any) -> type:
    return obj if inspect.isclass(obj) else type(obj)


def _artifact(value: ModelArtifact | str | None) -> ModelArtifact | None:
    return ModelArtifact(value) if isinstance(value, str) else value


STEP_KINDS["model_runner"] = ModelRunnerStep


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
