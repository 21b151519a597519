"""servegraph: real-time inference pipelines (serving graphs) served over gRPC.

import servegraph as sg

graph = sg.Graph("chat")
graph.to(name="pre", handler=preprocess).to("mypkg.steps.Enrich", name="enrich").respond()
with graph.to_mock_server() as mock:
    mock.test("/", body={"question": "hi"})
"""

from .callables import Context
from .engine import Engine
from .errors import (
    DeadlineExceeded,
    GraphError,
    InvalidArgument,
    MaxIterationsError,
    NotFound,
    ServingError,
    StepError,
    Unavailable,
)
from .event import Event
from .graph import Graph
from .llm import LLModel, LLMPromptArtifact
from .mock import MockServer
from .models import EndpointName, Model, ModelArtifact, ModelRunnerStep, ModelSelector
from .steps import COMPLETE, Choice, RouterStep, Step, TaskStep

__version__ = "0.1.0"

__all__ = [
    "COMPLETE",
    "Choice",
    "Context",
    "DeadlineExceeded",
    "EndpointName",
    "Engine",
    "Event",
    "Graph",
    "GraphError",
    "InvalidArgument",
    "LLMPromptArtifact",
    "LLModel",
    "MaxIterationsError",
    "MockServer",
    "Model",
    "ModelArtifact",
    "ModelRunnerStep",
    "ModelSelector",
    "NotFound",
    "RouterStep",
    "ServingError",
    "Step",
    "StepError",
    "TaskStep",
    "Unavailable",
]
