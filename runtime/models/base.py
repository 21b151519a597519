"""The base class of user models (MLRun's `Model`): what servegraph calls, in whichever process hosts it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .artifacts import ModelArtifact


class Model:
    """Base class for models: override `load`, and `predict` (`predict_async` for the asyncio mechanism).

    A generator `predict` streams its chunks. `preprocess` and `postprocess` run around every call
    in the same process as the model. Models in worker processes are created and loaded there,
    once per process, and keep their state across calls.

    A shared model learns which proxy a call came through when its predict method takes
    ``endpoint`` and ``model_artifact`` keyword arguments.
    """

    def __init__(self, name: str | None = None, model_artifact: ModelArtifact | None = None, **parameters: Any):
        self.name = name or type(self).__name__
        self.model_artifact = model_artifact
        self.parameters = parameters

    def load(self) -> None:
        """Load weights and anything slow; runs once, where the model runs, before it is ready."""

    def predict(self, body: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    async def predict_async(self, body: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict_async()")

    def get_param(self, key: str, default: Any = None) -> Any:
        return self.parameters.get(key, default)

    @classmethod
    def cannot_serve(cls, name: str, execution_mechanism: str, model_artifact: ModelArtifact | None) -> str | None:
        """Why this class cannot serve endpoint `name` as declared, or None; checked when the graph starts,
        where MLRun checks it: the asyncio mechanism calls `predict_async`, every other one `predict`."""
        needed = "predict_async" if execution_mechanism == "asyncio" else "predict"
        if not overrides(cls, needed):
            return f"{name} is running with {execution_mechanism} execution_mechanism but {needed}() is not implemented"
        return None


def overrides(model_class: type, method: str) -> bool:
    return getattr(model_class, method, None) is not getattr(Model, method, None)
