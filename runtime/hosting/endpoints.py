"""The endpoint registry: everything about each model endpoint of a graph, in one place.

An endpoint is what callers name: a ModelRunnerStep model, a shared model's proxy, a RouterStep
route, or the graph itself (as a V2 model). Its entry holds its declaration (spec, step, paths,
labels, a proxy's artifact), its V2 name and metadata, the handle to call its model (set when
the hub has placed it) and its statistics. The model runner, the V2 data plane, `Describe`,
statistics and records all read it here.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..dsl.graph import Graph
from ..dsl.model_runner import EndpointName, ModelRunnerStep
from ..dsl.steps import RouterStep
from ..errors import GraphError, NotFound
from ..models.artifacts import ModelArtifact
from ..models.placement import Placement
from ..models.spec import ModelSpec

if TYPE_CHECKING:
    from .handles import ModelHandle

POOL = "pool"
"""The name of the worker (each process of it) that hosts the process_pool models."""

RESERVOIR = 2048
"""Latest latencies kept per endpoint for p50/p99 in `servegraph stats`."""


@dataclass
class EndpointStats:
    """What `servegraph stats` and Triton's ModelStatistics report for one endpoint."""

    requests: int = 0
    failures: int = 0
    total_ns: int = 0
    failed_ns: int = 0
    last_ms: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    in_flight: int = 0
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=RESERVOIR))

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass(eq=False)
class ModelEndpoint:
    name: str
    kind: str
    """"model" (its own model), "proxy" (a shared model's), "route" (a RouterStep's) or "graph"."""
    step: str = ""
    model: ModelSpec | None = None
    """The model that serves it: its own, or the shared model behind a proxy."""
    artifact: ModelArtifact | None = None
    """A proxy's artifact: its model learns it once, at start, and each call names only the endpoint."""
    labels: dict[str, Any] = field(default_factory=dict)
    input_path: str | None = None
    result_path: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    record: bool = False
    """Whether each call writes a monitoring record."""
    handle: ModelHandle | None = None
    stats: EndpointStats = field(default_factory=EndpointStats)

    @property
    def is_model(self) -> bool:
        return self.model is not None

    @property
    def output_names(self) -> list[str]:
        return [tensor["name"] for tensor in self.outputs]

    @property
    def platform(self) -> str:
        return f"servegraph_{self.model.execution_mechanism}" if self.model else f"servegraph_{self.kind}"

    def selector_name(self) -> EndpointName:
        """The name a ModelSelector sees: a string that also carries labels and the model's class."""
        name = EndpointName(self.name)
        name.labels = dict(self.labels)
        name.model_class = self.model.model_class.__name__ if self.model else ""
        name.execution_mechanism = self.model.execution_mechanism if self.model else ""
        return name

    def describe(self) -> dict[str, Any]:
        """What `Describe` shows of the endpoint."""
        shown: dict[str, Any] = {"name": self.name, "step": self.step, "kind": self.kind}
        if self.model is not None:
            shown["model_class"] = self.model.model_class.__name__
            shown["execution_mechanism"] = self.model.execution_mechanism
        return shown


class EndpointRegistry:
    """The endpoints of one validated graph, by name, in declaration order."""

    def __init__(self, graph: Graph):
        graph.validate()
        self.graph = graph
        self.by_name: dict[str, ModelEndpoint] = {graph.name: ModelEndpoint(graph.name, "graph")}
        for name, (step, endpoint) in graph.endpoints().items():
            if endpoint.model is not None and name in graph.shared_models:  # placements are found by name
                raise GraphError(
                    f"step '{step.name}': model endpoint '{name}' has the name of a shared model; "
                    "endpoint and shared model names must be unique in a graph"
                )
            shared = graph.shared_models.get(endpoint.shared_model_name or "")
            model = endpoint.model or shared.model  # type: ignore[union-attr]
            self.by_name[name] = ModelEndpoint(
                name,
                "proxy" if shared else "model",
                step.name,
                model,
                endpoint.model_artifact if shared else None,
                dict(endpoint.labels),
                endpoint.input_path or (shared.input_path if shared else None),
                endpoint.result_path or (shared.result_path if shared else None),
                _tensors(endpoint.inputs),
                _tensors(endpoint.outputs),
                graph.monitoring or model.monitoring,
            )
        for step in graph.steps.values():
            if isinstance(step, RouterStep):
                for key in step.routes:
                    self.by_name.setdefault(key, ModelEndpoint(key, "route", step.name))

    def get(self, name: str) -> ModelEndpoint:
        endpoint = self.by_name.get(name)
        if endpoint is None:
            raise NotFound(f"unknown model '{name}' (models: {', '.join(self.by_name)})")
        return endpoint

    def of_step(self, step: ModelRunnerStep) -> list[ModelEndpoint]:
        return [self.by_name[name] for name in step.endpoints]

    def models(self) -> list[ModelEndpoint]:
        """The endpoints a model serves (models and proxies)."""
        return [endpoint for endpoint in self.by_name.values() if endpoint.model is not None]

    def placements(self) -> dict[str, tuple[ModelSpec, str | None, dict[str, ModelArtifact | None]]]:
        """Each model to load once: its spec, the step that owns it (None for a shared model), and the
        endpoints it serves with their proxy artifacts."""
        placed: dict[str, tuple[ModelSpec, str | None, dict[str, ModelArtifact | None]]] = {
            name: (shared.model, None, {}) for name, shared in self.graph.shared_models.items()
        }
        for endpoint in self.models():
            if endpoint.kind == "model":
                placed[endpoint.name] = (endpoint.model, endpoint.step, {})  # type: ignore[assignment]
            else:
                placed[endpoint.model.name][2][endpoint.name] = endpoint.artifact  # type: ignore[union-attr]
        return placed

    def worker_placements(self) -> tuple[dict[str, Placement], dict[str, Placement]]:
        """The models that run in workers, split as workers host them: each dedicated_process model and
        each shared model in a worker of its own (the first dict), every process_pool model of the
        model runners together in each process of the pool (the second)."""
        dedicated: dict[str, Placement] = {}
        pooled: dict[str, Placement] = {}
        for name, (spec, step, proxies) in self.placements().items():
            if spec.execution_mechanism == "process_pool" and step is not None:
                pooled[name] = Placement(spec, proxies)
            elif spec.in_worker:
                dedicated[name] = Placement(spec, proxies)
        return dedicated, pooled

    def worker_of(self, name: str) -> tuple[str, dict[str, Placement]]:
        """The worker that hosts model `name` and what it hosts: a dedicated_process or shared model's own
        worker (named after the model), or for a process_pool model the pool (`POOL`). GraphError if no
        worker hosts a model of that name, saying which do."""
        dedicated, pooled = self.worker_placements()
        if name in dedicated:
            return name, {name: dedicated[name]}
        if name in pooled:
            return POOL, pooled
        endpoint = self.by_name.get(name)
        if endpoint is not None and endpoint.kind == "proxy":
            why = f"'{name}' is a proxy of shared model '{endpoint.model.name}': name the shared model"  # type: ignore[union-attr]
        elif endpoint is not None and endpoint.model is not None:
            why = f"model '{name}' runs in the router ({endpoint.model.execution_mechanism})"
        else:
            why = f"graph '{self.graph.name}' has no model '{name}'"
        hosted = [*dedicated, *(f"{model} (pool)" for model in pooled)]
        raise GraphError(f"{why}; the models that run in workers: {', '.join(hosted) or 'none'}")

    def describe(self) -> list[dict[str, Any]]:
        return [endpoint.describe() for endpoint in self.by_name.values() if endpoint.kind != "graph"]


def _tensors(declared: list[Any] | None) -> list[dict[str, Any]]:
    """``inputs=["x", {"name": "y", "datatype": "FP32", "shape": [-1, 4]}]`` → V2 tensor metadata."""
    tensors = []
    for item in declared or []:
        spec = {"name": item} if isinstance(item, str) else dict(item)
        tensors.append({"name": spec["name"], "datatype": spec.get("datatype", ""), "shape": spec.get("shape", [-1])})
    return tensors
