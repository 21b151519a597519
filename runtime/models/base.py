"""The base class of user models (MLRun's `Model`): what servegraph calls, in whichever process hosts it."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

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

    prefer_async: ClassVar[bool] = False
    """Call `predict_async` under every mechanism: set by models whose async predict serves many calls at
    once (an LLM's continuous batching), where a sync predict would hold the worker's one predict thread."""

    def load(self) -> None:
        """Load weights and anything slow; runs once, where the model runs, before it is ready."""

    def predict(self, body: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    async def predict_async(self, body: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict_async()")

    def __new__(cls, *args: Any, **kwargs: Any) -> Model:
        instance = super().__new__(cls)
        instance.init_arguments = (args, kwargs)  # what `add_model(model_class=instance)` rebuilds it from
        return instance

    def get_param(self, key: str, default: Any = None) -> Any:
        return self.parameters.get(key, default)

    def predict_arguments(self, body: Any, model_artifact: ModelArtifact | None) -> dict[str, Any]:
        """Keyword arguments for predict beyond the body, for this call (a shared model gets its proxy's
        artifact); `LLModel` passes the rendered ``messages`` and ``invocation_config``."""
        return {}

    def is_streaming(self) -> bool:
        """Whether predict streams (is a generator), as MLRun's ``Model.is_streaming``."""
        return inspect.isgeneratorfunction(self.predict) or inspect.isasyncgenfunction(self.predict_async)

    def get_local_model_path(self, suffix: str = "") -> tuple[str | None, dict[str, Any]]:
        """MLRun's helper: the local path of the model file and the artifact's extra data.

        The artifact's URI is a file or a directory; in a directory its ``model_file``, else the first
        file ending with `suffix`. Remote stores are MLRun's platform and out of scope.
        """
        artifact = getattr(self.model_artifact, "model_artifact", None) or self.model_artifact
        if artifact is None or artifact.uri is None:
            return None, {}
        path = Path(artifact.uri)
        if artifact.meta.get("model_file"):
            path = path / artifact.meta["model_file"]
        elif path.is_dir():
            path = next((item for item in sorted(path.iterdir()) if item.name.endswith(suffix)), path)
        return str(path), dict(artifact.meta.get("extra_data") or {})

    @classmethod
    def cannot_serve(cls, name: str, execution_mechanism: str, model_artifact: ModelArtifact | None) -> str | None:
        """Why this class cannot serve endpoint `name` as declared, or None; checked when the graph starts,
        where MLRun checks it: the asyncio mechanism calls `predict_async`, every other one `predict`
        (a model with ``predict_batch`` may have neither)."""
        needed = "predict_async" if execution_mechanism == "asyncio" or cls.prefer_async else "predict"
        if not overrides(cls, needed) and not callable(getattr(cls, "predict_batch", None)):
            return f"{name} is running with {execution_mechanism} execution_mechanism but {needed}() is not implemented"
        return None


def overrides(model_class: type, method: str) -> bool:
    return getattr(model_class, method, None) is not getattr(Model, method, None)
