"""The event that flows through a graph, and the dotted paths that steps read and write in its body."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidArgument


def new_event_id() -> str:
    return os.urandom(16).hex()


class Event:
    """One request moving through the graph (MLRun's Event: body, id, path, headers, method).

    Steps with ``full_event=True`` receive the Event itself; error handlers find the failure in
    `error` (the message) and `origin_state` (the failing step's name, MLRun's attribute name).
    """

    __slots__ = ("body", "error", "headers", "id", "iterations", "method", "origin_state", "path")

    def __init__(
        self,
        body: Any = None,
        *,
        id: str | None = None,
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
    ):
        self.body = body
        self.id = id or new_event_id()
        self.path = path or "/"
        self.headers: dict[str, str] = dict(headers or {})
        self.method = method
        self.error: str | None = None
        self.origin_state: str | None = None
        self.iterations: dict[str, int] = {}

    def branch(self) -> Event:
        """A copy for a parallel branch: its own body and loop counters, the same id."""
        other = Event(copy.deepcopy(self.body), id=self.id, path=self.path, headers=self.headers, method=self.method)
        other.iterations = dict(self.iterations)
        return other

    def with_body(self, body: Any, path: str | None = None) -> Event:
        """A sibling event carrying another body (one chunk of a stream, the part of a body a step reads, a
        route's request), sharing the loop counters."""
        other = Event(
            body, id=self.id, path=self.path if path is None else path, headers=self.headers, method=self.method
        )
        other.iterations = dict(self.iterations)
        return other

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, path={self.path!r}, body={self.body!r})"


def v2_model_path(path: str) -> list[str] | None:
    """``/v2/models/<name>/<action>...`` → ``[name, action, ...]`` (``[]`` for ``/v2/models``); None for
    any other path. The one parser of V2 paths: RouterStep routes and the V2 data plane both read them."""
    parts = [part for part in path.split("/") if part]
    return parts[2:] if parts[:2] == ["v2", "models"] else None


def split_path(path: str | None) -> tuple[str, ...]:
    """``"outputs.answer"`` → ``("outputs", "answer")``; empty for no path."""
    return tuple(part for part in (path or "").split(".") if part)


def get_path(body: Any, keys: tuple[str, ...], path: str) -> Any:
    """Read ``body[k1][k2]...``; a missing key is the caller's mistake, so INVALID_ARGUMENT."""
    for key in keys:
        try:
            body = body[key]
        except (KeyError, TypeError, IndexError):
            raise InvalidArgument(f"input path '{path}' not found in the event body") from None
    return body


def set_path(body: Any, keys: tuple[str, ...], value: Any, copy: bool = False) -> Any:
    """Write `value` at ``body[k1][k2]...`` creating dicts on the way; returns the updated body.

    With `copy`, `body` stays as it was: the result is a new body that shares everything but the dicts
    on the path (what each chunk of a stream needs, at the cost of a few dicts, not of the whole body).
    """
    if not keys:
        return value
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidArgument(f"cannot write result path '{'.'.join(keys)}' into a {type(body).__name__} body")
    if copy:
        body = dict(body)
    target = body
    for key in keys[:-1]:
        child = target.get(key)
        if child is None:
            child = {}
        elif copy and isinstance(child, dict):
            child = dict(child)
        target[key] = child
        target = child
    target[keys[-1]] = value
    return body
