"""The serving graph: MLRun's flow DSL (`to`, `add_step`, `respond`, `error_handler`) and its checks.

A Graph is a declaration. It validates as it is built, serializes to a plain dict (steps named by
import path, so another process can rebuild it) and renders as Mermaid; `engine.Engine` runs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import GraphError
from ..imports import resolve, resolve_handler
from ..models.artifacts import ModelArtifact, as_artifact
from ..models.spec import ModelSpec
from ..redact import redacted
from .kinds import step_class, step_from_dict
from .model_runner import Endpoint, ModelRunnerStep, SharedModel
from .steps import RouterStep, Step, TaskStep, as_list

if TYPE_CHECKING:
    from ..serving.mock import MockServer

DEFAULT_MAX_ITERATIONS = 100


class Graph:
    """A flow of steps. ``allow_cyclic`` permits loops (`cycle_to`), bounded by ``max_iterations``;
    ``monitoring=True`` writes a record per model call of every endpoint. Classes and handlers named
    without a module (``"Echo"``) are found in `namespace`, else in the globals of the code that adds
    them, as in MLRun."""

    def __init__(
        self,
        name: str = "graph",
        topology: str = "flow",
        engine: str = "async",
        allow_cyclic: bool = False,
        max_iterations: int | None = DEFAULT_MAX_ITERATIONS,
        monitoring: bool = False,
        namespace: Mapping[str, Any] | None = None,
    ):
        if engine == "sync" and allow_cyclic:
            raise GraphError("Cyclic graphs are not supported with sync engine, please use async engine")
        if topology != "flow":
            raise GraphError(f"topology {topology!r} is not supported: use 'flow' (and sg.RouterStep to route)")
        if engine not in ("async", "sync"):
            raise GraphError(f"engine {engine!r} is not supported: use 'async' (or MLRun's 'sync' flow)")
        self.name = name
        self.topology = topology
        self.engine = engine
        self.allow_cyclic = allow_cyclic
        self.max_iterations = max_iterations
        self.monitoring = monitoring
        self.namespace = namespace
        self.steps: dict[str, Step] = {}
        self.error_handlers: dict[str, TaskStep] = {}
        self.on_error: str | None = None
        self.shared_models: dict[str, SharedModel] = {}
        self.max_processes: int | None = None
        self.max_threads: int | None = None
        self._last: Step | None = None

    # -- building -------------------------------------------------------------------------------
    def to(self, class_name: Any = None, name: str | None = None, handler: Any = None, **kwargs: Any) -> Step:
        """Add a step that receives the graph's input (a root) and return it, so calls chain."""
        return self.add_step(class_name, name=name, handler=handler, **kwargs)

    def add_step(
        self,
        class_name: Any = None,
        name: str | None = None,
        handler: Any = None,
        after: str | list[str] | None = None,
        full_event: bool | None = None,
        input_path: str | None = None,
        result_path: str | None = None,
        max_iterations: int | None = None,
        cycle_to: str | list[str] | None = None,
        before: str | None = None,
        **class_args: Any,
    ) -> Step:
        """Add a step after `after` (a name, names, or "$prev"); without `after` it is a root. With
        `before`, MLRun's insertion: the new step takes that step's place and the step runs after it.

        `class_name` is a class with ``do(body)``, its import path, an instance, or a Step object;
        `handler` is a function or its import path (or, with a class, the method to call).
        """
        parents = [self._resolve_parent(parent) for parent in as_list(after)]
        options = {
            "full_event": full_event,
            "input_path": input_path,
            "result_path": result_path,
            "max_iterations": max_iterations,
        }
        if isinstance(class_name, Step):
            step = class_name
            step.name = name or step.name
            for key, value in options.items():
                if value is not None:
                    setattr(step, key, value)
            if step.graph is not None:
                raise GraphError(f"step '{step.name}' is already in graph '{step.graph.name}'")
        else:
            options = {key: value for key, value in options.items() if value is not None}
            step = _make_step(class_name, name, handler, class_args, options, self.namespace)
        step.after = parents or step.after
        if before is not None:
            step.after = list(self[before].after)
        if self.engine == "sync":
            self._check_sync(step, before)
        step.cycle_targets.extend(as_list(cycle_to))
        last = self._last
        self._register(step)
        try:
            self._check_acyclic()
        except GraphError:
            del self.steps[step.name]
            step.graph, self._last = None, last
            raise
        if before is not None:
            self[before].after = [step.name]
        return step

    def insert_step(self, key: str, step: Step, after: str | None = None, before: str | None = None) -> Step:
        """Add a step object named `key` after `after` and, with `before`, ahead of that step (MLRun's)."""
        return self.add_step(step, name=key, after=after, before=before)

    def set_flow(self, steps: list[Any]) -> Step:
        """Chain `steps` (step objects, classes or names) one after another from the graph's input; the
        last one is returned, as MLRun's set_flow."""
        last = None
        for step in steps:
            last = self.add_step(step, after=last.name if last else None)
        if last is None:
            raise GraphError(f"graph '{self.name}': set_flow needs at least one step")
        return last

    @property
    def model_endpoints_names(self) -> list[str]:
        """The model endpoints of the graph's ModelRunnerSteps, in order (MLRun's name)."""
        return [name for step in self.steps.values() if isinstance(step, ModelRunnerStep) for name in step.endpoints]

    @property
    def model_endpoints_routes_names(self) -> list[str]:
        """The routes of the graph's RouterSteps, in order (MLRun's name)."""
        return [name for step in self.steps.values() if isinstance(step, RouterStep) for name in step.routes]

    def error_handler(
        self,
        name: str | None = None,
        class_name: Any = None,
        handler: Any = None,
        before: str | list[str] | None = None,
        **kwargs: Any,
    ) -> Graph:
        """Run a handler step when any step without its own handler raises.

        The handler gets the event with `error` and `origin_state`; its output is the response
        (or, with `before`, goes on to those steps).
        """
        step = self.add_error_handler(class_name, name=name, handler=handler, before=before, **kwargs)
        self.on_error = step.name
        return self

    def add_error_handler(
        self,
        class_name: Any = None,
        name: str | None = None,
        handler: Any = None,
        before: str | list[str] | None = None,
        full_event: bool = False,
        input_path: str | None = None,
        result_path: str | None = None,
        **class_args: Any,
    ) -> TaskStep:
        """Declare an error-handler step (used by `error_handler` on the graph and on steps)."""
        options = {"full_event": full_event, "input_path": input_path, "result_path": result_path}
        step = _make_step(class_name, name, handler, class_args, options, self.namespace, before=before)
        if not isinstance(step, TaskStep):
            raise GraphError(f"error handler '{step.name}' must be a function or a class with do()")
        self._check_new_name(step.name)
        step.graph = self
        self.error_handlers[step.name] = step
        return step

    def add_shared_model(
        self,
        name: str,
        model_class: Any,
        execution_mechanism: str,
        model_artifact: ModelArtifact | str | None = None,
        input_path: str | None = None,
        result_path: str | None = None,
        **model_parameters: Any,
    ) -> Graph:
        """Declare a model that loads once and serves every ``add_shared_model_proxy`` endpoint."""
        if name in self.shared_models:
            raise GraphError(f"graph '{self.name}' already has a shared model named '{name}'")
        spec = ModelSpec(name, model_class, execution_mechanism, as_artifact(model_artifact), model_parameters)
        self.shared_models[name] = SharedModel(spec, input_path, result_path)
        return self

    def configure_pool_resource(self, max_processes: int | None = None, max_threads: int | None = None) -> None:
        """Size the graph's worker pool (process_pool models) and the router's default thread pool."""
        self.max_processes = max_processes
        self.max_threads = max_threads

    def endpoints(self) -> dict[str, tuple[ModelRunnerStep, Endpoint]]:
        """Every model endpoint of the graph by name, with the step that holds it."""
        found: dict[str, tuple[ModelRunnerStep, Endpoint]] = {}
        for step in self.steps.values():
            if isinstance(step, ModelRunnerStep):
                for name, endpoint in step.endpoints.items():
                    if name in found:
                        raise GraphError(
                            f"model endpoint '{name}' is declared in steps '{found[name][0].name}' and '{step.name}'; "
                            "endpoint names must be unique in a graph"
                        )
                    found[name] = (step, endpoint)
        return found

    def _resolve_parent(self, parent: str) -> str:
        if parent in ("$prev", "$last"):
            if self._last is None:
                raise GraphError(f"after={parent!r}: graph '{self.name}' has no steps yet")
            return self._last.name
        if parent not in self.steps:
            raise GraphError(f"after={parent!r}: graph '{self.name}' has no step named {parent!r}")
        return parent

    def _check_new_name(self, name: str) -> None:
        if name in self.steps or name in self.error_handlers:
            raise GraphError(f"graph '{self.name}' already has a step named '{name}'")

    def _register(self, step: Step) -> None:
        self._check_new_name(step.name)
        self._claim(step, endpoint_names(step), shared_model_names(step))
        step.graph = self
        self.steps[step.name] = step
        self._last = step

    def _claim(self, step: Step, names: list[str], shared: list[str]) -> None:
        """MLRun's checks as endpoints join the graph: model endpoints and routes have names unique
        across the graph, and a proxy's shared model is already declared."""
        owners = {
            name: other.name for other in self.steps.values() if other is not step for name in endpoint_names(other)
        }
        for name in names:
            if name in owners:
                raise GraphError(
                    f"model endpoint '{name}' is declared in steps '{owners[name]}' and '{step.name}'; "
                    "endpoint names must be unique in a graph"
                )
        for name in shared:
            if name not in self.shared_models:
                raise GraphError(
                    f"step '{step.name}': Can't find shared model named {name} (declare it first with add_shared_model)"
                )

    def _check_sync(self, step: Step, before: str | None) -> None:
        """MLRun's sync flow runs one chain of steps: no model runners, no branches or joins."""
        if isinstance(step, ModelRunnerStep):
            raise GraphError(
                f"step '{step.name}': a ModelRunnerStep can only be added to a graph with the async engine"
            )
        others = [other for other in self.steps.values() if other.name != before]
        taken = [parent for parent in step.after if any(parent in other.after for other in others)]
        if len(step.after) > 1 or taken:
            raise GraphError(
                f"step '{step.name}': the sync engine runs one chain of steps, without branches or joins; "
                "use engine='async'"
            )

    def _check_acyclic(self) -> None:
        """A cycle is refused as it is made, as in MLRun, unless the graph allows loops."""
        cycle = None if self.allow_cyclic else self.find_cycle()
        if cycle:
            raise GraphError(
                f"graph '{self.name}' has a cycle ({' -> '.join(cycle)}): "
                "cyclic graphs are not allowed, enable allow_cyclic=True to allow loops"
            )

    def __getitem__(self, name: str) -> Step:
        try:
            return self.steps[name]
        except KeyError:
            raise KeyError(f"graph '{self.name}' has no step named '{name}'") from None

    # -- structure ------------------------------------------------------------------------------
    def outlets(self) -> dict[str, list[str]]:
        """Each step's next steps, in the order they were added, then its `cycle_to` targets."""
        result: dict[str, list[str]] = {name: [] for name in self.steps}
        for step in self.steps.values():
            for parent in step.after:
                result[parent].append(step.name)
        for step in self.steps.values():
            result[step.name].extend(t for t in step.cycle_targets if t not in result[step.name])
        return result

    def roots(self) -> list[str]:
        """Steps the input enters: those after no other step, except steps that only handle errors."""
        handlers = {step.on_error for step in self.steps.values()} | {self.on_error}
        return [name for name, step in self.steps.items() if not step.after and name not in handlers]

    def responder(self) -> Step | None:
        return next((step for step in self.steps.values() if step.responder), None)

    def validate(self) -> None:
        """Raise GraphError for a graph that cannot run; called before a graph is served."""
        if not self.steps:
            raise GraphError(f"graph '{self.name}' has no steps")
        responders = [step.name for step in self.steps.values() if step.responder]
        if len(responders) > 1:
            raise GraphError(f"graph '{self.name}' has several responders {responders}; only one may respond()")
        for step in self.steps.values():
            for target in step.cycle_targets:
                if target not in self.steps:
                    raise GraphError(f"step '{step.name}': cycle_to names unknown step '{target}'")
            if step.on_error and step.on_error not in self.error_handlers and step.on_error not in self.steps:
                raise GraphError(f"step '{step.name}': unknown error handler '{step.on_error}'")
        for handler in self.error_handlers.values():
            for target in handler.before:
                if target not in self.steps:
                    raise GraphError(f"error handler '{handler.name}': before names unknown step '{target}'")
        roots = self.roots()
        if not roots:
            raise GraphError(f"graph '{self.name}' has no entry step: every step comes after another")
        if self.engine == "sync" and len(roots) > 1:
            raise GraphError(f"graph '{self.name}': the sync engine runs one chain of steps, but {roots} all start one")
        for name, (step, endpoint) in self.endpoints().items():
            if endpoint.shared_model_name and endpoint.shared_model_name not in self.shared_models:
                raise GraphError(
                    f"step '{step.name}': proxy '{name}' names unknown shared model '{endpoint.shared_model_name}'"
                )
        self._check_acyclic()

    def find_cycle(self) -> list[str] | None:
        """One cycle of the graph as a list of step names (first name repeated at the end), or None."""
        outlets = self.outlets()
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        path: list[str] = []

        def visit(name: str) -> list[str] | None:
            state[name] = 1
            path.append(name)
            for child in outlets[name]:
                if state.get(child) == 1:
                    return [*path[path.index(child) :], child]
                if child not in state and (found := visit(child)):
                    return found
            state[name] = 2
            path.pop()
            return None

        for name in self.steps:
            if name not in state and (found := visit(name)):
                return found
        return None

    # -- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": self.name,
            "topology": self.topology,
            "engine": self.engine,
            "allow_cyclic": self.allow_cyclic,
            "max_iterations": self.max_iterations,
            "monitoring": self.monitoring,
            "steps": {name: step.to_dict() for name, step in self.steps.items()},
        }
        if self.error_handlers:
            spec["error_handlers"] = {name: step.to_dict() for name, step in self.error_handlers.items()}
        if self.on_error:
            spec["on_error"] = self.on_error
        if self.shared_models:
            spec["shared_models"] = {name: shared.to_dict() for name, shared in self.shared_models.items()}
        if self.max_processes or self.max_threads:
            spec["pool"] = {"max_processes": self.max_processes, "max_threads": self.max_threads}
        return spec

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Graph:
        graph = cls(
            spec.get("name", "graph"),
            topology=spec.get("topology", "flow"),
            engine=spec.get("engine", "async"),
            allow_cyclic=spec.get("allow_cyclic", False),
            max_iterations=spec.get("max_iterations", DEFAULT_MAX_ITERATIONS),
            monitoring=spec.get("monitoring", False),
        )
        for name, shared in spec.get("shared_models", {}).items():
            graph.shared_models[name] = SharedModel.from_dict(name, shared)
        graph.configure_pool_resource(**spec.get("pool", {}))
        for name, step_spec in spec.get("error_handlers", {}).items():
            handler = step_from_dict(name, step_spec)
            handler.graph = graph
            graph.error_handlers[name] = handler  # type: ignore[assignment]
        for name, step_spec in spec.get("steps", {}).items():
            graph._register(step_from_dict(name, step_spec))
        graph.on_error = spec.get("on_error")
        return graph

    def to_yaml(self, *, with_secrets: bool = False) -> str:
        """The graph as YAML, for showing and saving: parameters and class arguments named like
        secrets (api_key, token, password, ...) read ``"***"``, so a graph read back from it lacks
        them (pass them from the environment); ``with_secrets=True`` writes the real values.
        `to_dict()` always holds the real values (workers load their models from it)."""
        spec = self.to_dict()
        return yaml.safe_dump(spec if with_secrets else redacted(spec), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Graph:
        return cls.from_dict(yaml.safe_load(text))

    def plot(self, filename: str | None = None, **_: Any) -> str:
        """The graph as a Mermaid flowchart (paste into any Markdown that renders Mermaid). MLRun's callers
        name a file (MLRun draws an image there): the Mermaid text is written to it, whatever its suffix."""
        from .plot import to_mermaid

        text = to_mermaid(self)
        if filename is not None:
            with open(filename, "w", encoding="utf-8") as file:
                file.write(text)
        return text

    # -- running --------------------------------------------------------------------------------
    def to_mock_server(self, **options: Any) -> MockServer:
        """An in-process server running this graph on the real engine (workers really start)."""
        from ..serving.mock import MockServer

        return MockServer(self, **options)

    def __repr__(self) -> str:
        return f"<Graph {self.name!r} steps={list(self.steps)}>"


def _make_step(
    class_name: Any,
    name: str | None,
    handler: Any,
    class_args: dict[str, Any],
    options: dict[str, Any],
    namespace: Mapping[str, Any] | None,
    before: str | list[str] | None = None,
) -> Step:
    """Build the right Step for what the user passed: a Step class or name, or user code (named ones
    looked up in the graph's namespace, else where the graph is built)."""
    target = class_name
    if isinstance(class_name, str):
        target = step_class(class_name) or resolve(class_name, "class", namespace)
    if class_name is None and isinstance(handler, str):
        handler = resolve_handler(handler, namespace)
    if inspect.isclass(target) and issubclass(target, Step):
        if before:
            raise GraphError(f"before= applies to error handlers, not to {target.__name__}")
        if isinstance(class_name, str) and class_name.startswith("*"):  # MLRun's "*Class": a router and its class
            return RouterStep(name, class_name=class_name[1:] or None, class_args=class_args, **options)
        return target(name, **class_args, **options)
    return TaskStep(name, class_name=target, handler=handler, class_args=class_args, before=before, **options)


def endpoint_names(step: Step) -> list[str]:
    """The endpoint names a step declares: a runner's models and proxies, a router's routes."""
    if isinstance(step, ModelRunnerStep):
        return list(step.endpoints)
    if isinstance(step, RouterStep):
        return list(step.routes)
    return []


def shared_model_names(step: Step) -> list[str]:
    """The shared models a runner's proxies use."""
    if not isinstance(step, ModelRunnerStep):
        return []
    return [endpoint.shared_model_name for endpoint in step.endpoints.values() if endpoint.shared_model_name]
