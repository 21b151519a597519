"""MLRun's ``V2ModelServer``: a model as a graph step (or a router's route) answering V2-style operations.

A port of MLRun model-server code runs as written: subclass it with ``load()`` and ``predict(request)``
(``request`` is the body, ``{"inputs": [...], ...}``), optionally ``preprocess`` / ``validate`` /
``postprocess`` / ``explain`` / ``op_<name>(event)``. It runs in the router like any step; servegraph's own
`servegraph.Model` is what runs in worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..dsl.event import Event, get_path, set_path, split_path, v2_model_path

PREDICT_OPERATIONS = ("infer", "predict")


class V2ModelServer:
    """A model step, MLRun's way: the event's path (``/v2/models/<name>[/versions/<v>]/<op>``, or the
    operation a router passes on) or the body's ``"operation"`` picks what it does.

    - ``infer`` / ``predict`` (the default for a request with a body): ``{"id", "model_name", "outputs":
      predict(request)}``, plus ``model_version`` for a versioned name (``"m3:v2"``);
    - ``explain``: the same with ``explain(request)``;
    - a GET without an operation: the metadata ``{"name", "version", "inputs": [], "outputs": []}``;
    - ``ready`` (GET): whether it loaded; ``<op>`` with an ``op_<op>(event)`` method: that method's result;
    - anything else raises ``ValueError("illegal model operation ...")`` (HTTP 400, as in MLRun).

    Keyword arguments it does not name are parameters (``get_param``); `input_path` / `result_path` select
    the request in the body and where the response goes, as on any step.
    """

    def __init__(
        self,
        context: Any = None,
        name: str | None = None,
        model_path: str | None = None,
        model: Any = None,
        protocol: str | None = None,
        input_path: str | None = None,
        result_path: str | None = None,
        **kwargs: Any,
    ):
        self.context = context
        self.name = name
        self.model_path = model_path
        self.model = model
        self.protocol = protocol or "v2"
        self.input_path = input_path
        self.result_path = result_path
        self.ready = model is not None
        self.metrics: dict[str, Any] = {}
        self.labels: dict[str, Any] = {}
        self._params = kwargs

    @property
    def model_name(self) -> str:
        """The name without its version (``"m3"`` for ``"m3:v2"``)."""
        return (self.name or type(self).__name__).partition(":")[0]

    @property
    def version(self) -> str:
        return (self.name or "").partition(":")[2]

    # -- what subclasses write -------------------------------------------------------------------
    def load(self) -> None:
        """Load the model (see `get_model`); without an override, a model object must have been given."""
        if self.model is None:
            raise ValueError("please specify a load method or a model object")

    def predict(self, request: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement predict(request)")

    def explain(self, request: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement explain(request)")

    def preprocess(self, request: Any, operation: str) -> Any:
        return request

    def validate(self, request: Any, operation: str) -> Any:
        """MLRun's V2 check: the request has a list under ``"inputs"``."""
        if self.protocol == "v2":
            if not isinstance(request, dict) or "inputs" not in request:
                raise ValueError('Expected key "inputs" in request body')
            if not isinstance(request["inputs"], list):
                raise ValueError('Expected "inputs" to be a list')
        return request

    def postprocess(self, response: dict[str, Any]) -> dict[str, Any]:
        return response

    # -- helpers they call -----------------------------------------------------------------------
    def get_param(self, key: str, default: Any = None) -> Any:
        return self._params.get(key, default)

    def set_metric(self, name: str, value: Any) -> None:
        self.metrics[name] = value

    def get_model(self, suffix: str = "") -> tuple[str | None, dict[str, Any] | None]:
        """The local model file: `model_path`, or in a directory the first file ending with `suffix`; no
        extra data items (MLRun's come from its artifact store, out of scope here)."""
        if not self.model_path:
            return None, None
        path = Path(self.model_path)
        if path.is_dir():
            found = sorted(item for item in path.iterdir() if item.is_file() and item.name.endswith(suffix))
            if not found:
                raise FileNotFoundError(f"model {self.name}: no file ending with {suffix!r} in {path}")
            path = found[0]
        return str(path), {}

    # -- what the graph calls --------------------------------------------------------------------
    def post_init(self, mode: str = "sync", **_: Any) -> None:
        """Load the model once the graph is built."""
        if not self.ready:
            self.load()
            self.ready = True

    def do_event(self, event: Event, *_: Any, **__: Any) -> Any:
        body = event.body
        request = get_path(body, split_path(self.input_path), self.input_path or "") if self.input_path else body
        operation, event_id = self._operation(event.path), event.id
        if isinstance(request, dict):
            operation = operation or request.get("operation", "")
            event_id = request.get("id", event_id)
        if not operation and event.method != "GET":
            operation = "infer"
        if operation in PREDICT_OPERATIONS or operation == "explain":
            request = self.validate(self.preprocess(request, operation), operation)
            outputs = self.explain(request) if operation == "explain" else self.predict(request)
            response: dict[str, Any] = {"id": event_id, "model_name": self.model_name, "outputs": outputs}
            if self.version:
                response["model_version"] = self.version
            response = self.postprocess(response)
        elif operation == "":
            response = {"name": self.model_name, "version": self.version, "inputs": [], "outputs": []}
        elif operation == "ready" and event.method == "GET":
            response = {"name": self.model_name, "ready": self.ready}
        elif callable(custom := getattr(self, f"op_{operation}", None)):
            response = custom(event)
        else:
            raise ValueError(f"illegal model operation {operation}, method={event.method}")
        return set_path(body, split_path(self.result_path), response) if self.result_path else response

    @staticmethod
    def _operation(path: str) -> str:
        """The operation a path names: what follows the model (and its version) in a V2 path, else the path."""
        parts = v2_model_path(path)
        if parts is None:
            return path.strip("/")
        if len(parts) > 2 and parts[1] == "versions":
            parts = parts[2:]
        return "/".join(parts[1:])
