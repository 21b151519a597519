"""Turning names into objects and back, so graphs can cross processes and MLRun graphs port as written.

A class or function may be given as an import path (``"pkg.module.Name"``) or, as in MLRun, by its bare
name (``"Echo"``): that is looked up in the namespace the graph was given, else in the globals of the
code that is building the graph. A handler may also be an expression of ``event`` (``"(event + 1)"``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

from .errors import GraphError

_COMPAT = "servegraph.compat"
MLRUN_NAMES: dict[str, str] = {
    **{
        f"mlrun.serving{module}.{name}": f"{_COMPAT}.routers.{name}"
        for module in ("", ".routers")
        for name in ("BaseModelRouter", "ModelRouter", "ParallelRun", "VotingEnsemble")
    },
    "mlrun.serving.V2ModelServer": f"{_COMPAT}.v2_serving.V2ModelServer",
    "mlrun.serving.v2_serving.V2ModelServer": f"{_COMPAT}.v2_serving.V2ModelServer",
    **{name: f"{_COMPAT}.routers.{name}" for name in ("ModelRouter", "ParallelRun", "VotingEnsemble")},
}
"""MLRun's classes under the names MLRun graphs give them (import paths, and a router class's bare name
when the building code has no such name), mapped to servegraph's own."""


def import_object(path: str, what: str = "object") -> Any:
    """Import ``"pkg.module.attr"`` (or ``"pkg.module:attr"``), naming the path in the error."""
    path = MLRUN_NAMES.get(path, path)
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise GraphError(f"cannot import {what} '{path}': expected 'package.module.Name'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphError(f"cannot import {what} '{path}': {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise GraphError(f"cannot import {what} '{path}': module '{module_name}' has no '{attr}'") from exc
    return target


def resolve(name: str, what: str = "object", namespace: Mapping[str, Any] | None = None) -> Any:
    """An import path, or a bare name from `namespace` or from the building code's globals (MLRun's lookup)."""
    if "." in name or ":" in name:
        return import_object(name, what)
    for scope in (namespace, _building_code_globals()):
        if scope is not None and name in scope:
            return scope[name]
    if name in MLRUN_NAMES:
        return import_object(MLRUN_NAMES[name], what)
    raise GraphError(
        f"cannot find {what} '{name}' where the graph is built: define it there, pass the graph a "
        f"namespace=, or give its import path ('package.module.{name}')"
    )


def _building_code_globals() -> Mapping[str, Any] | None:
    """The globals of the nearest caller outside servegraph: the code that is building the graph."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "servegraph" and not module.startswith("servegraph."):
            return frame.f_globals
        frame = frame.f_back  # type: ignore[assignment]
    return None


class Expression:
    """A handler written as an expression of ``event`` in parentheses (MLRun's ``"(event + 1)"``)."""

    __name__ = "expression"

    def __init__(self, source: str):
        self.source = source
        try:
            self._fn = eval(compile(f"lambda event: {source[1:-1]}", "<handler>", "eval"), {}, {})
        except SyntaxError as exc:
            raise GraphError(f"handler expression {source!r} is not valid Python: {exc.msg}") from None

    def __call__(self, event: Any) -> Any:
        return self._fn(event)


def resolve_handler(handler: str, namespace: Mapping[str, Any] | None = None) -> Any:
    """A handler given as a string: an expression ``"(...)"``, an import path, or a bare name."""
    handler = handler.strip()
    if handler.startswith("(") and handler.endswith(")"):
        return Expression(handler)
    return resolve(handler, "handler", namespace)


def object_path(obj: Any) -> str:
    """The import path of a module-level function or class (the inverse of `import_object`)."""
    return f"{obj.__module__}.{obj.__qualname__}"


def is_importable(obj: Any) -> bool:
    """Whether `object_path(obj)` leads back to `obj` from another process."""
    qualname = getattr(obj, "__qualname__", "")
    module = getattr(obj, "__module__", None)
    return bool(module) and module != "__main__" and "<" not in qualname
