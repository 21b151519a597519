"""Turning import paths ("pkg.module.Name") into objects and back, so graphs can cross processes."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import GraphError


def import_object(path: str, what: str = "object") -> Any:
    """Import ``"pkg.module.attr"`` (or ``"pkg.module:attr"``), naming the path in the error."""
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


def object_path(obj: Any) -> str:
    """The import path of a module-level function or class (the inverse of `import_object`)."""
    return f"{obj.__module__}.{obj.__qualname__}"


def is_importable(obj: Any) -> bool:
    """Whether `object_path(obj)` leads back to `obj` from another process."""
    qualname = getattr(obj, "__qualname__", "")
    module = getattr(obj, "__module__", None)
    return bool(module) and module != "__main__" and "<" not in qualname
