"""Step declarations: what a graph is made of, as data that serializes and rebuilds elsewhere.

A declaration holds only names, import paths and arguments; `engine.py` turns declarations into
running nodes (`dsl.kinds` rebuilds them from dicts). User-facing base classes for steps (`Choice`) live here too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from ..errors import GraphError, InvalidArgument
from ..imports import Expression, object_path, resolve, resolve_handler
from ..redact import redacted

if TYPE_CHECKING:
    from .graph import Graph

COMPLETE = "Complete"
"""The outlet name that ends a flow (MLRun's name): the step's output becomes the response."""


def as_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


class Step:
    """A node of the graph: where it sits (`after`), what it reads and writes, how it loops."""

    kind: ClassVar[str] = "step"

    def __init__(
        self,
        name: str | None = None,
        *,
        after: str | list[str] | None = None,
        full_event: bool = False,
        input_path: str | None = None,
        result_path: str | None = None,
        max_iterations: int | None = None,
        cycle_to: str | list[str] | None = None,
    ):
        self.name = name or type(self).__name__
        self.after = as_list(after)
        self.full_event = bool(full_event)
        self.input_path = input_path
        self.result_path = result_path
        self.max_iterations = max_iterations
        self.cycle_targets = as_list(cycle_to)
        self.responder = False
        self.on_error: str | None = None
        self.graph: Graph | None = None

    # -- building (MLRun's chaining API) -------------------------------------------------------
    def to(self, class_name: Any = None, name: str | None = None, handler: Any = None, **kwargs: Any) -> Step:
        """Add a step that runs after this one and return it, so calls chain."""
        kwargs.setdefault("after", self.name)
        return self._owner().add_step(class_name, name=name, handler=handler, **kwargs)

    def after_step(self, *names: str, append: bool = True) -> Step:
        """Run this step after `names` too (or, ``append=False``, after them only), as MLRun's after_step."""
        graph = self._owner()
        parents = [graph._resolve_parent(name) for name in names]
        previous = list(self.after)
        self.after = [*previous, *(p for p in parents if p not in previous)] if append else parents
        try:
            graph._check_acyclic()
        except GraphError:
            self.after = previous
            raise
        return self

    def respond(self) -> Step:
        """Make this step's output the response to the caller."""
        self.responder = True
        return self

    def cycle_to(self, step_names: str | list[str]) -> Step:
        """Send this step's output back to earlier steps too (needs ``allow_cyclic=True``)."""
        added = as_list(step_names)
        self.cycle_targets.extend(added)
        if self.graph is not None:
            try:
                self.graph._check_acyclic()
            except GraphError:
                del self.cycle_targets[-len(added) :]
                raise
        return self

    def error_handler(
        self,
        name: str | None = None,
        class_name: Any = None,
        handler: Any = None,
        before: str | list[str] | None = None,
        **kwargs: Any,
    ) -> Step:
        """Run a handler step when this step raises; it gets the event with `error` and `origin_state`.

        Without `before` the handler's output is the response; with it, the flow goes on there. Only a
        `name` (MLRun's older form) names a step of the graph, added before or after, as the handler.
        """
        if class_name is None and handler is None and name:
            self.on_error = name
            return self
        step = self._owner().add_error_handler(class_name, name=name, handler=handler, before=before, **kwargs)
        self.on_error = step.name
        return self

    def _owner(self) -> Graph:
        if self.graph is None:
            raise GraphError(f"step '{self.name}' is not in a graph yet: add it with graph.to() or add_step()")
        return self.graph

    # -- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind}
        spec.update(self._spec())
        for key, value in (
            ("after", self.after),
            ("full_event", self.full_event),
            ("input_path", self.input_path),
            ("result_path", self.result_path),
            ("max_iterations", self.max_iterations),
            ("cycle_to", self.cycle_targets),
            ("responder", self.responder),
            ("on_error", self.on_error),
        ):
            if value:
                spec[key] = value
        return spec

    def _spec(self) -> dict[str, Any]:
        """The kind-specific part of `to_dict`."""
        return {}

    def to_yaml(self) -> str:
        """The step as YAML, secrets redacted (MLRun's steps print themselves so; a router topology's
        "graph" is its router step)."""
        return yaml.safe_dump(redacted(self.to_dict()), sort_keys=False)

    @classmethod
    def _from_spec(cls, name: str, spec: dict[str, Any]) -> Step:
        return cls(name, **spec)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class TaskStep(Step):
    """A step that runs user code: a function (`handler`), or a class with ``do(body)``.

    `class_name` and `handler` may be objects or import paths; with both, `handler` names the
    method to call. An instance may be given as `class_name` and is used as is.
    """

    kind = "task"

    def __init__(
        self,
        name: str | None = None,
        *,
        class_name: Any = None,
        handler: Any = None,
        class_args: dict[str, Any] | None = None,
        before: str | list[str] | None = None,
        **options: Any,
    ):
        self.instance: Any = None
        if isinstance(class_name, str):
            class_name = resolve(class_name, "class")
        if class_name is not None and not isinstance(class_name, type):
            self.instance, class_name = class_name, type(class_name)
        if class_name is None and handler is None:
            raise GraphError(f"step '{name}' needs a class_name or a handler")
        if class_name is None and isinstance(handler, str):
            handler = resolve_handler(handler)
        if class_name is None and not callable(handler):
            raise GraphError(f"step '{name}': handler {handler!r} is not callable")
        if class_name is not None and not inspect.isclass(class_name):
            raise GraphError(f"step '{name}': class_name {class_name!r} is not a class")
        if class_name is not None and handler is not None and not isinstance(handler, str):
            raise GraphError(f"step '{name}': with a class, handler must be a method name")
        self.cls: type | None = class_name
        self.handler: Callable[..., Any] | str | None = handler
        self.class_args = dict(class_args or {})
        self.before = as_list(before)
        own_name = getattr(self.instance, "name", None)  # an object step is named as the object is (MLRun's)
        super().__init__(
            name or (own_name if isinstance(own_name, str) else default_name(class_name, handler)), **options
        )

    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.cls is not None:
            spec["class_name"] = object_path(self.cls)
            if self.handler:
                spec["handler"] = self.handler
        elif isinstance(self.handler, Expression):
            spec["handler"] = self.handler.source
        else:
            spec["handler"] = object_path(self.handler)
        if self.class_args:
            spec["class_args"] = dict(self.class_args)
        if self.before:
            spec["before"] = list(self.before)
        return spec


class RouterStep(Step):
    """Sends each event to its routes, as its router class decides.

    Without a class, servegraph's routing by path: ``/<route>`` and ``/v2/models/<route>/infer`` (and other
    ``/v2/models/<route>/...`` paths) pick `<route>`; with a single route, ``/`` picks it; an unknown route
    is NOT_FOUND; a streaming route streams. With `class_name` (a class, an instance, or its name, MLRun's
    ``ModelRouter``, ``VotingEnsemble``, ``ParallelRun`` or a subclass; `class_args` go to it), that class
    routes: see `servegraph.compat.routers`. Such a step is named after its class unless named.
    """

    kind = "router"

    def __init__(
        self,
        name: str | None = None,
        routes: dict[str, Any] | None = None,
        class_name: Any = None,
        class_args: dict[str, Any] | None = None,
        **options: Any,
    ):
        self.instance: Any = None
        if isinstance(class_name, str):
            class_name = resolve(class_name, "router class")
        if class_name is not None and not inspect.isclass(class_name):
            self.instance, class_name = class_name, type(class_name)
        self.cls: type | None = class_name
        self.class_args = dict(class_args or {})
        own_name = getattr(self.instance, "name", None)
        default = own_name if isinstance(own_name, str) else class_name.__name__ if class_name else None
        super().__init__(name or default, **options)
        self.routes: dict[str, TaskStep] = {}
        for key, route in (routes or {}).items():
            self.add_route(key, **(route if isinstance(route, dict) else {"class_name": route}))

    def add_route(self, key: str, class_name: Any = None, handler: Any = None, **class_args: Any) -> TaskStep:
        """Add (or replace) the route `key`; ``class_args`` go to the class constructor. `class_name` may also
        be a TaskStep (MLRun's ``route=``)."""
        if not key or "/" in key:
            raise GraphError(f"router '{self.name}': route key {key!r} must be a non-empty name without '/'")
        if isinstance(class_name, TaskStep):
            route, route.name = class_name, key
        else:
            route = TaskStep(key, class_name=class_name, handler=handler, class_args=class_args)
        if self.graph is not None:
            self.graph._claim(self, [key], [])
        self.routes[key] = route
        return route

    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"routes": {key: route._spec() for key, route in self.routes.items()}}
        if self.cls is not None:
            spec["class_name"] = object_path(self.cls)
        if self.class_args:
            spec["class_args"] = dict(self.class_args)
        return spec

    @classmethod
    def _from_spec(cls, name: str, spec: dict[str, Any]) -> Step:
        routes = spec.pop("routes", {})
        step = cls(name, **spec)
        for key, route in routes.items():
            step.add_route(key, route.get("class_name"), route.get("handler"), **route.get("class_args", {}))
        return step


class Merge(Step):
    """Joins the branches of one event (MLRun's ``storey.Merge``): the outputs of the steps before it that
    share a join key are sent on once, as one list of bodies in the order they arrived.

    The key is the event id, or `key_path`, an expression of ``event`` (the body, or with
    ``full_event=True`` the Event: ``"event['doc_id']"``). It waits for `expected_num_events` parts (default:
    one per step before it; with one, bodies pass as they are). At most `max_behind` keys (64) wait at
    once; past that the oldest is dropped, as in storey.
    """

    kind = "merge"

    def __init__(
        self,
        name: str | None = None,
        full_event: bool | None = None,
        key_path: str | None = None,
        max_behind: int | None = None,
        expected_num_events: int | None = None,
        **options: Any,
    ):
        super().__init__(name, full_event=key_path is None if full_event is None else full_event, **options)
        self.key_path = key_path
        self.max_behind = max_behind
        self.expected_num_events = expected_num_events
        self.join_key = self._compile(key_path or "event.id")

    def _compile(self, key_path: str) -> Callable[[Any], Any]:
        try:
            return eval(compile(f"lambda event: {key_path}", "<key_path>", "eval"), {}, {})  # type: ignore[no-any-return]
        except SyntaxError as exc:
            raise GraphError(f"merge '{self.name}': key_path {key_path!r} is not valid Python: {exc.msg}") from None

    def _spec(self) -> dict[str, Any]:
        options = ("key_path", "max_behind", "expected_num_events")
        return {key: getattr(self, key) for key in options if getattr(self, key) is not None}


class Choice:
    """Base for steps that only route: the input passes on unchanged to the outlets it selects.

    Override ``select_outlets(event)`` to return step names, or ``"Complete"`` to end the flow.
    """

    def __init__(self, **_: Any):
        pass

    def do(self, event: Any) -> Any:
        return event

    def select_outlets(self, event: Any) -> list[str] | None:
        raise NotImplementedError(f"{type(self).__name__} must override select_outlets(event)")


class ChoiceByField(Choice):
    """Routes each event to the outlets named in one of its body's fields (MLRun's ChoiceByField)."""

    def __init__(self, field_name: str, **_: Any):
        self.field_name = field_name

    def select_outlets(self, event: Any) -> Any:
        if self.field_name not in event:
            raise InvalidArgument(f"Field '{self.field_name}' is not contained in the event keys {list(event)}.")
        outlets = event[self.field_name]
        if outlets is None:
            raise InvalidArgument(f"Field '{self.field_name}' exists but its value is None.")
        if not isinstance(outlets, str | list | tuple):
            raise InvalidArgument(
                f"Field '{self.field_name}' must be a string or list of strings but is instead of type "
                f"'{type(outlets).__name__}'."
            )
        if not outlets:
            raise InvalidArgument(f"The value of the key '{self.field_name}' cannot be an empty list.")
        return [outlets] if isinstance(outlets, str) else outlets


def default_name(class_name: Any, handler: Any) -> str:
    if isinstance(handler, str):
        return handler.rpartition(".")[2]
    if handler is not None:
        return getattr(handler, "__name__", type(handler).__name__)
    return getattr(class_name, "__name__", "step")
