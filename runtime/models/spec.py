"""A model as declared (`ModelSpec`): its class, by import path across processes, and how it runs."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import GraphError
from ..imports import is_importable, object_path, resolve
from .artifacts import ModelArtifact
from .base import Model

IN_ROUTER = ("naive", "asyncio", "thread_pool")
IN_WORKERS = ("process_pool", "dedicated_process")
EXECUTION_MECHANISMS = IN_ROUTER + IN_WORKERS

DEFAULT_MAX_BATCH_DELAY_MS = 2.0
DEFAULT_MAX_QUEUED = 256

BUILTIN_MODELS = {"LLModel": "servegraph.models.llm.LLModel"}
"""Model classes that may be named without their module, as in MLRun (``model_class="LLModel"``)."""


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
            self.model_class = resolve(path, "model class")
        if not (inspect.isclass(self.model_class) and issubclass(self.model_class, Model)):
            raise GraphError(f"model '{self.name}': model_class must be a servegraph Model subclass")
        if self.execution_mechanism not in EXECUTION_MECHANISMS:
            raise GraphError(
                f"model '{self.name}': execution_mechanism {self.execution_mechanism!r} is not one of "
                f"{', '.join(EXECUTION_MECHANISMS)}"
            )
        for key, minimum in (("max_batch_size", 1), ("max_queued", 0)):
            value = self.parameters.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
                raise GraphError(f"model '{self.name}': {key} must be an integer >= {minimum}, got {value!r}")
        delay = self.parameters.get("max_batch_delay_ms")
        if delay is not None and (not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0):
            raise GraphError(f"model '{self.name}': max_batch_delay_ms must be a number >= 0, got {delay!r}")
        if self.in_worker:
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
    def in_worker(self) -> bool:
        return self.execution_mechanism in IN_WORKERS

    @property
    def monitoring(self) -> bool:
        """``monitoring=True`` writes a record per call of this model."""
        return bool(self.parameters.get("monitoring"))

    @property
    def timeout(self) -> float | None:
        value = self.parameters.get("timeout")
        return float(value) if value is not None else None

    @property
    def max_batch_size(self) -> int:
        """Calls a model with ``predict_batch`` gets at once (1: no batching)."""
        return int(self.parameters.get("max_batch_size", getattr(self.model_class, "default_max_batch_size", 1)))

    @property
    def max_batch_delay(self) -> float:
        """Seconds a call may wait for others to fill its batch."""
        return float(self.parameters.get("max_batch_delay_ms", DEFAULT_MAX_BATCH_DELAY_MS)) / 1000

    @property
    def max_queued(self) -> int:
        """Calls that may wait for the model; past them a new call fails at once (RESOURCE_EXHAUSTED)."""
        return int(self.parameters.get("max_queued", DEFAULT_MAX_QUEUED))

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
