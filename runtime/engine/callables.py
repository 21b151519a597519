"""User code behind a step (a function, or a class with ``do``) bound to one calling convention.

Steps may be sync or async functions, or sync or async generators (streaming steps); the engine
asks `Call.mode` once, at start, instead of inspecting results on every event.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..dsl.steps import Step, TaskStep
from ..errors import GraphError


class Mode(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    GENERATOR = "generator"
    ASYNC_GENERATOR = "async_generator"

    @property
    def streams(self) -> bool:
        return self in (Mode.GENERATOR, Mode.ASYNC_GENERATOR)


@dataclass
class Context:
    """What step code may ask of the server it runs in (MLRun passes it as `context`)."""

    graph_name: str
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("servegraph.steps"))


@dataclass
class Call:
    fn: Callable[[Any], Any]
    mode: Mode
    instance: Any = None
    takes_event: bool = False  # MLRun's ``do_event``: the step gets the Event, whatever its full_event


def mode_of(fn: Callable[..., Any]) -> Mode:
    """How `fn` must be called; objects with ``__call__`` are judged by that method."""
    plain = inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial)
    target = fn if plain else getattr(fn, "__call__", fn)  # noqa: B004
    if inspect.isasyncgenfunction(target):
        return Mode.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(target):
        return Mode.GENERATOR
    if inspect.iscoroutinefunction(target):
        return Mode.ASYNC
    return Mode.SYNC


def bind(step: TaskStep, context: Context) -> Call:
    """Instantiate the step's class (if any) and pick the function each event goes to."""
    if step.cls is None:
        fn = _with_context(step.handler, context)  # type: ignore[arg-type]
        return Call(fn, mode_of(fn))
    instance = step.instance if step.instance is not None else instantiate(step.cls, step.class_args, step, context)
    if getattr(instance, "name", "") is None:  # an object given without a name is named after its step, as in MLRun
        instance.name = step.name
    started(instance)
    by_event = hasattr(instance, "do_event") and (step.full_event or not hasattr(instance, "do"))
    method = step.handler or ("do_event" if by_event else "do")
    fn = getattr(instance, method, None)
    if not callable(fn):
        raise GraphError(f"step '{step.name}': class {step.cls.__name__} has no method '{method}'")
    return Call(fn, mode_of(fn), instance, takes_event=method == "do_event")


def started(instance: Any) -> None:
    """MLRun's ``post_init()`` hook, called once the graph is built (a model server loads its model there)."""
    post_init = getattr(instance, "post_init", None)
    if callable(post_init):
        post_init()


def instantiate(cls: type, args: dict[str, Any], step: Step, context: Context) -> Any:
    """Create a step object; `name` and `context` are passed when its constructor names them or takes
    ``**kwargs`` (as MLRun does, so a class written for MLRun finds its name)."""
    kwargs = dict(args)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    open_ended = any(param.kind is inspect.Parameter.VAR_KEYWORD for param in params.values())
    if ("name" in params or open_ended) and "name" not in kwargs:
        kwargs["name"] = step.name
    if ("context" in params or open_ended) and "context" not in kwargs:
        kwargs["context"] = context
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise GraphError(f"step '{step.name}': cannot create {cls.__name__}(**{args!r}): {exc}") from exc


def _with_context(fn: Callable[..., Any], context: Context) -> Callable[..., Any]:
    """Handlers that take a `context` parameter get it, as in MLRun."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    return functools.partial(fn, context=context) if "context" in params else fn
