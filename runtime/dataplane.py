"""The V2 inference data plane: what KServe V2 / Triton callers can ask, independent of transport.

Every model endpoint is a V2 model named by its endpoint name (ModelRunnerStep models, shared-model
proxies, RouterStep routes), and so is the graph, under its own name. The gRPC V2 service
(`v2_service.py`) and the ``/v2/models/...`` paths of `Invoke` (MLRun's REST-style callers) are
two thin adapters over this one class.

A model gets its inputs by name when it declares them (``add_model(inputs=[...])``), else as
``{"inputs": [values in request order]}``; numbers arrive as numpy arrays, BYTES as lists of bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from .engine import Engine
from .errors import InvalidArgument, NotFound
from .event import Event, new_event_id
from .v2_protocol import Tensor, from_json, to_json, to_tensors

EXTENSIONS = ["parameters", "statistics"]


@dataclass
class V2Model:
    name: str
    kind: str  # "graph", "model", "proxy" or "route"
    platform: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [tensor["name"] for tensor in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [tensor["name"] for tensor in self.outputs]


def _declared(tensors: list[Any] | None) -> list[dict[str, Any]]:
    """``inputs=["x", {"name": "y", "datatype": "FP32", "shape": [-1, 4]}]`` → tensor metadata."""
    declared = []
    for item in tensors or []:
        spec = {"name": item} if isinstance(item, str) else dict(item)
        declared.append({"name": spec["name"], "datatype": spec.get("datatype", ""), "shape": spec.get("shape", [-1])})
    return declared


class DataPlane:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._models: dict[str, V2Model] | None = None

    @property
    def models(self) -> dict[str, V2Model]:
        if self._models is None:
            graph = self.engine.graph
            models = {graph.name: V2Model(graph.name, "graph", "servegraph_graph")}
            for endpoint in self.engine.describe_endpoints():
                step_endpoint = graph.endpoints().get(endpoint["name"])
                declared = step_endpoint[1] if step_endpoint else None
                platform = f"servegraph_{endpoint.get('execution_mechanism') or 'route'}"
                models[endpoint["name"]] = V2Model(
                    endpoint["name"],
                    endpoint["kind"],
                    platform,
                    _declared(declared.inputs if declared else None),
                    _declared(declared.outputs if declared else None),
                )
            self._models = models
        return self._models

    def model(self, name: str) -> V2Model:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model '{name}' (models: {', '.join(self.models)})")
        return model

    # -- health and metadata ---------------------------------------------------------------------------
    def ready(self) -> bool:
        return self.engine.ready

    def model_ready(self, name: str) -> bool:
        self.model(name)
        return self.engine.ready and self.engine.endpoint_ready(name)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "servegraph", "version": version("servegraph"), "extensions": EXTENSIONS}

    def model_metadata(self, name: str) -> dict[str, Any]:
        model = self.model(name)
        return {
            "name": model.name,
            "versions": [],
            "platform": model.platform,
            "inputs": model.inputs,
            "outputs": model.outputs,
        }

    def statistics(self, name: str = "") -> list[dict[str, Any]]:
        """Triton's ModelStatistics for one model (or every model endpoint when `name` is empty)."""
        names = [self.model(name).name] if name else [n for n, m in self.models.items() if m.kind != "graph"]
        monitor = self.engine.monitor
        result = []
        for model in names:
            stats = monitor.stats.get(model) if monitor is not None else None
            if stats is None:
                result.append({"name": model})
                continue
            succeeded = stats.requests - stats.failures
            result.append(
                {
                    "name": model,
                    "last_inference": stats.last_ms,
                    "inference_count": succeeded,
                    "execution_count": succeeded,
                    "inference_stats": {
                        "success": {"count": succeeded, "ns": stats.total_ns},
                        "fail": {"count": stats.failures, "ns": stats.failed_ns},
                    },
                }
            )
        return result

    # -- inference -------------------------------------------------------------------------------------
    async def infer(self, name: str, inputs: list[Tensor], request_id: str | None = None) -> list[Tensor]:
        model = self.model(name)
        body = self._body(model, inputs)
        if model.kind in ("model", "proxy"):
            result = await self.engine.call_endpoint(name, body, request_id or new_event_id())
        else:
            result = await self.engine.run(self._event(model, body, request_id))
        return to_tensors(result, model.output_names)

    async def infer_stream(
        self, name: str, inputs: list[Tensor], request_id: str | None = None
    ) -> AsyncIterator[list[Tensor]]:
        """One list of outputs per chunk the model (or graph) produces."""
        model = self.model(name)
        body = self._body(model, inputs)
        if model.kind in ("model", "proxy"):
            chunks = self.engine.stream_endpoint(name, body, request_id or new_event_id())
        else:
            chunks = self.engine.stream(self._event(model, body, request_id))
        async for chunk in chunks:
            yield to_tensors(chunk, model.output_names)

    def _body(self, model: V2Model, inputs: list[Tensor]) -> dict[str, Any]:
        if not model.input_names:
            return {"inputs": [tensor.value for tensor in inputs]}
        given = {tensor.name: tensor.value for tensor in inputs}
        unknown = set(given) - set(model.input_names)
        missing = set(model.input_names) - set(given)
        if unknown or missing:
            raise InvalidArgument(
                f"model '{model.name}' takes inputs {model.input_names}; "
                f"got unknown {sorted(unknown)} and missing {sorted(missing)}"
            )
        return given

    @staticmethod
    def _event(model: V2Model, body: Any, request_id: str | None) -> Event:
        path = f"/v2/models/{model.name}/infer" if model.kind == "route" else "/"
        return Event(body, id=request_id, path=path)

    # -- the /v2/models paths of Invoke ----------------------------------------------------------------
    def handles(self, path: str) -> bool:
        """Whether an Invoke path is a V2 request: all of ``/v2/models``, except inference on a
        RouterStep route, which stays with the graph (the route's own code reads the body)."""
        parts = [part for part in path.split("/") if part]
        if parts[:2] != ["v2", "models"]:
            return False
        if len(parts) == 2:
            return True
        model = self.models.get(parts[2])
        return model is None or not (model.kind == "route" and parts[3:] == ["infer"])

    async def invoke_path(self, event: Event) -> Any:
        parts = [part for part in event.path.split("/") if part][2:]
        if not parts:
            return {"models": list(self.models)}
        name, action = parts[0], parts[1:]
        self.model(name)
        if not action:
            return self.model_metadata(name)
        if action == ["ready"]:
            return {"name": name, "ready": self.model_ready(name)}
        if action == ["infer"]:
            return await self._infer_json(name, event)
        if len(action) == 1:
            return await self.engine.call_operation(name, action[0], event.body)
        raise NotFound(f"no V2 path '{event.path}'")

    async def _infer_json(self, name: str, event: Event) -> dict[str, Any]:
        body = event.body if isinstance(event.body, dict) else {}
        inputs = body.get("inputs")
        if not isinstance(inputs, list):
            raise InvalidArgument("a V2 infer body needs an 'inputs' list")
        reply = {"id": body.get("id") or event.id, "model_name": name}
        if inputs and all(isinstance(item, dict) and "datatype" in item for item in inputs):
            outputs = await self.infer(name, [from_json(item) for item in inputs], event.id)
            requested = body.get("outputs") if isinstance(body.get("outputs"), list) else []
            wanted = {
                item["name"] for item in requested if isinstance(item, dict) and isinstance(item.get("name"), str)
            }
            reply["outputs"] = [to_json(t) for t in outputs if not wanted or t.name in wanted]
            return reply
        model = self.model(name)  # MLRun's form: raw values, the model's result as "outputs"
        if model.kind in ("model", "proxy"):
            reply["outputs"] = await self.engine.call_endpoint(name, body, event.id)
        else:
            reply["outputs"] = await self.engine.run(self._event(model, body, event.id))
        return reply
