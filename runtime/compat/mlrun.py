"""MLRun's function-level entry points, mapped onto servegraph: ``new_function``, ``set_topology`` (flow or
router), ``add_model`` and ``to_mock_server``, so a port of an MLRun serving graph changes only its imports.

A mapping, not a second engine: `ServingFunction` holds one `servegraph.Graph`, and `MLRunMockServer`
is servegraph's `MockServer` reporting failures the way MLRun's mock server does (``RuntimeError("failed
(<HTTP status>): ...")``, or the status itself with ``silent=True``). MLRun's platform (Nuclio, V3IO and
Kafka streams, the MLRun DB, projects) is out of scope: see the README's porting page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..dsl.graph import Graph
from ..dsl.steps import RouterStep
from ..engine.callables import Context
from ..errors import GraphError
from ..serving.mock import MockResponse, MockServer
from .routers import ModelRouter


def new_function(name: str, kind: str = "serving", project: str = "", **_: Any) -> ServingFunction:
    """An MLRun serving function: only ``kind="serving"`` maps onto servegraph."""
    if kind != "serving":
        raise GraphError(f"new_function(kind={kind!r}): only 'serving' functions map onto servegraph")
    return ServingFunction(name, project)


class ServingFunction:
    """What MLRun's serving function does for a graph: holds it and makes mock servers of it."""

    def __init__(self, name: str, project: str = ""):
        self.name = name
        self.project = project
        self.graph: Graph | None = None

    def set_topology(
        self,
        topology: str = "flow",
        class_name: Any = None,
        engine: str = "async",
        exist_ok: bool = False,
        allow_cyclic: bool = False,
        max_iterations: int | None = None,
        namespace: Mapping[str, Any] | None = None,
        **class_args: Any,
    ) -> Graph | RouterStep:
        """A new graph for this function, as MLRun's ``set_topology``: ``"flow"`` returns the graph;
        ``"router"`` returns its one router step, of `class_name` (a class, an instance or its name; MLRun's
        default, `ModelRouter`) with `class_args`, whose output is the response."""
        if self.graph is not None and not exist_ok:
            raise GraphError(f"function '{self.name}' already has a graph: pass exist_ok=True to replace it")
        if topology not in ("flow", "router"):
            raise GraphError(f"set_topology({topology!r}): the topology is 'flow' or 'router'")
        options = {"max_iterations": max_iterations} if max_iterations is not None else {}
        graph = Graph(self.name, engine=engine, allow_cyclic=allow_cyclic, namespace=namespace, **options)
        self.graph = graph
        if topology == "flow":
            return graph
        return graph.to(RouterStep(class_name=class_name or ModelRouter, class_args=class_args)).respond()

    def add_model(
        self,
        key: str,
        model_path: str | None = None,
        class_name: Any = None,
        router_step: str | None = None,
        **class_args: Any,
    ) -> Any:
        """A route named `key` on the graph's router (`router_step`, or its only one), as MLRun's add_model;
        a function without a graph gets a router topology first, as in MLRun."""
        if self.graph is None:
            self.set_topology("router")
        graph = self._graph()
        routers = [step for step in graph.steps.values() if isinstance(step, RouterStep)]
        if router_step is not None:
            routers = [step for step in routers if step.name == router_step]
        if len(routers) != 1:
            raise GraphError(f"add_model('{key}'): name the router step (router_step=); the graph has {len(routers)}")
        if model_path is not None:
            class_args["model_path"] = model_path
        return routers[0].add_route(key, class_name, **class_args)

    def to_mock_server(self, namespace: Mapping[str, Any] | None = None, **_: Any) -> MLRunMockServer:
        """A started mock server: models load, and refusals raise, here, as in MLRun."""
        graph = self._graph()
        if namespace is not None:
            graph.namespace = namespace
        return MLRunMockServer(graph).start()

    def _graph(self) -> Graph:
        if self.graph is None:
            raise GraphError(f"function '{self.name}' has no graph yet: call set_topology() first")
        return self.graph


class MLRunMockServer:
    """servegraph's mock server, failing as MLRun's does: a failed request raises
    ``RuntimeError("failed (<status>): <error>")``, or with ``silent=True`` returns the `MockResponse`."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.mock = MockServer(graph)

    @property
    def context(self) -> Context:
        return self.mock.context

    def start(self) -> MLRunMockServer:
        self.mock.start()
        return self

    def test(
        self,
        path: str = "/",
        body: Any = None,
        method: str = "",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        silent: bool = False,
        event_id: str | None = None,
    ) -> Any:
        result = self.mock.test(
            path, body, headers=headers, event_id=event_id, content_type=content_type, silent=True, method=method
        )
        if isinstance(result, MockResponse) and not silent:
            raise RuntimeError(f"failed ({result.status_code}): {result.body}")
        return result

    def wait_for_completion(self) -> None:
        """Stop the graph (MLRun waits for its async flow to drain; servegraph's calls are already done)."""
        self.mock.close()
