"""servegraph: real-time inference pipelines (serving graphs) served over gRPC.

import servegraph as sg

graph = sg.Graph("chat")
graph.to(name="pre", handler=preprocess).to("mypkg.steps.Enrich", name="enrich").respond()
with graph.to_mock_server() as mock:
    mock.test("/", body={"question": "hi"})

Names load on first use (PEP 562), so importing servegraph, or building a graph, imports no gRPC:
a worker process and a client load only what they run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    DeadlineExceeded,
    GraphError,
    InvalidArgument,
    MaxIterationsError,
    ModelRunnerError,
    NotFound,
    ResourceExhausted,
    ServingError,
    StepError,
    Unavailable,
)

if TYPE_CHECKING:
    from .compat.routers import ModelRouter, ParallelRun, VotingEnsemble
    from .compat.v2_serving import V2ModelServer
    from .dsl.event import Event
    from .dsl.graph import Graph
    from .dsl.model_runner import EndpointName, ModelRunnerSelector, ModelRunnerStep, ModelSelector
    from .dsl.steps import COMPLETE, Choice, ChoiceByField, Merge, RouterStep, Step, TaskStep
    from .engine.callables import Context
    from .engine.engine import Engine
    from .models.artifacts import LLMPromptArtifact, ModelArtifact
    from .models.base import Model
    from .models.llm import LLModel
    from .serving.mock import MockServer

__version__ = "0.1.0"

_LAZY = {
    "COMPLETE": "servegraph.dsl.steps",
    "Choice": "servegraph.dsl.steps",
    "ChoiceByField": "servegraph.dsl.steps",
    "Context": "servegraph.engine.callables",
    "EndpointName": "servegraph.dsl.model_runner",
    "Engine": "servegraph.engine.engine",
    "Event": "servegraph.dsl.event",
    "Graph": "servegraph.dsl.graph",
    "LLMPromptArtifact": "servegraph.models.artifacts",
    "LLModel": "servegraph.models.llm",
    "Merge": "servegraph.dsl.steps",
    "MockServer": "servegraph.serving.mock",
    "Model": "servegraph.models.base",
    "ModelArtifact": "servegraph.models.artifacts",
    "ModelRunnerSelector": "servegraph.dsl.model_runner",
    "ModelRouter": "servegraph.compat.routers",
    "ModelRunnerStep": "servegraph.dsl.model_runner",
    "ModelSelector": "servegraph.dsl.model_runner",
    "RouterStep": "servegraph.dsl.steps",
    "Step": "servegraph.dsl.steps",
    "ParallelRun": "servegraph.compat.routers",
    "TaskStep": "servegraph.dsl.steps",
    "V2ModelServer": "servegraph.compat.v2_serving",
    "VotingEnsemble": "servegraph.compat.routers",
}

__all__ = [
    "DeadlineExceeded",
    "GraphError",
    "InvalidArgument",
    "MaxIterationsError",
    "ModelRunnerError",
    "NotFound",
    "ResourceExhausted",
    "ServingError",
    "StepError",
    "Unavailable",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'servegraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
