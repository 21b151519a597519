"""The one table of step kinds: the ``kind`` a serialized step names, and the class that rebuilds it."""

from __future__ import annotations

from typing import Any

from ..errors import GraphError
from .model_runner import ModelRunnerStep
from .steps import Merge, RouterStep, Step, TaskStep

STEP_KINDS: dict[str, type[Step]] = {cls.kind: cls for cls in (TaskStep, RouterStep, ModelRunnerStep, Merge)}

MLRUN_STEP_NAMES: dict[str, type[Step]] = {"storey.Merge": Merge, "mlrun.serving.merger.Merge": Merge}
"""Built-in steps under the names MLRun graphs give them."""


def step_class(class_name: str) -> type[Step] | None:
    """A built-in step class named by its class name (``"ModelRunnerStep"``, ``"Merge"``) or MLRun's name
    for it (``"storey.Merge"``), or ``"*"`` for a router (MLRun's shorthand; ``"*Class"`` names its router
    class), as `add_step` accepts."""
    if class_name.startswith("*"):
        return RouterStep
    if class_name in MLRUN_STEP_NAMES:
        return MLRUN_STEP_NAMES[class_name]
    return next((cls for cls in STEP_KINDS.values() if cls.__name__ == class_name), None)


def step_from_dict(name: str, spec: dict[str, Any]) -> Step:
    spec = dict(spec)
    step_cls = STEP_KINDS.get(spec.pop("kind", "task"))
    if step_cls is None:
        raise GraphError(f"step '{name}': unknown kind; known kinds are {sorted(STEP_KINDS)}")
    responder = spec.pop("responder", False)
    on_error = spec.pop("on_error", None)
    step = step_cls._from_spec(name, spec)
    step.responder = responder
    step.on_error = on_error
    return step
