"""The V2 inference data plane: what KServe V2 / Triton callers can ask, independent of transport.

Every endpoint of the registry is a V2 model named by its endpoint name (ModelRunnerStep models,
shared-model proxies, RouterStep routes), and so is the graph, under its own name. The gRPC V2 service
(`v2_service.py`) and the ``/v2/models/...`` paths of `Invoke` (MLRun's REST-style callers) are
two thin adapters over this one class.

A model gets its inputs by name when it declares them (``add_model(inputs=[...])``), else as
``{"inputs": [values in request order]}``; numbers arrive as numpy arrays, BYTES as lists of bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

from ..dsl.event import Event, new_event_id, v2_model_path
from ..engine.engine import Engine
from ..errors import InvalidArgument, NotFound
from ..hosting.endpoints import ModelEndpoint
from .v2_protocol import Tensor, from_json, to_json, to_tensors

EXTENSIONS = ["parameters", "statistics"]


class DataPlane:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.endpoints = engine.endpoints

    def model(self, name: str) -> ModelEndpoint:
        return self.endpoints.get(name)

    # -- health and metadata ---------------------------------------------------------------------------
    def ready(self) -> bool:
        return self.engine.ready

    def model_ready(self, name: str) -> bool:
        handle = self.model(name).handle
        return self.engine.ready and (handle is None or handle.ready())

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
        models = [self.model(name)] if name else [m for m in self.endpoints.by_name.values() if m.kind != "graph"]
        result = []
        for model in models:
            stats = model.stats
            if not stats.requests:
                result.append({"name": model.name})
                continue
            succeeded = stats.requests - stats.failures
            result.append(
                {
                    "name": model.name,
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
        if model.is_model:
            result = await self.engine.calls.call(model, body, request_id or new_event_id())
        else:
            result = await self.engine.run(self._event(model, body, request_id))
        return to_tensors(result, model.output_names)

    async def infer_stream(
        self, name: str, inputs: list[Tensor], request_id: str | None = None
    ) -> AsyncIterator[list[Tensor]]:
        """One list of outputs per chunk the model (or graph) produces."""
        model = self.model(name)
        body = self._body(model, inputs)
        if model.is_model:
            chunks = self.engine.calls.stream(model, body, request_id or new_event_id())
        else:
            chunks = self.engine.stream(self._event(model, body, request_id))
        async for chunk in chunks:
            yield to_tensors(chunk, model.output_names)

    @staticmethod
    def _body(model: ModelEndpoint, inputs: list[Tensor]) -> dict[str, Any]:
        names = [tensor["name"] for tensor in model.inputs]
        if not names:
            return {"inputs": [tensor.value for tensor in inputs]}
        given = {tensor.name: tensor.value for tensor in inputs}
        unknown = set(given) - set(names)
        missing = set(names) - set(given)
        if unknown or missing:
            raise InvalidArgument(
                f"model '{model.name}' takes inputs {names}; "
                f"got unknown {sorted(unknown)} and missing {sorted(missing)}"
            )
        return given

    @staticmethod
    def _event(model: ModelEndpoint, body: Any, request_id: str | None) -> Event:
        path = f"/v2/models/{model.name}/infer" if model.kind == "route" else "/"
        return Event(body, id=request_id, path=path)

    # -- the /v2/models paths of Invoke ----------------------------------------------------------------
    def handles(self, path: str) -> bool:
        """Whether an Invoke path is a V2 request: all of ``/v2/models``, except inference on a
        RouterStep route, which stays with the graph (the route's own code reads the body)."""
        parts = v2_model_path(path)
        if not parts:
            return parts is not None
        model = self.endpoints.by_name.get(parts[0])
        return model is None or not (model.kind == "route" and parts[1:] == ["infer"])

    async def invoke_path(self, event: Event) -> Any:
        parts = v2_model_path(event.path) or []
        if not parts:
            return {"models": list(self.endpoints.by_name)}
        name, action = parts[0], parts[1:]
        model = self.model(name)
        if not action:
            return self.model_metadata(name)
        if action == ["ready"]:
            return {"name": name, "ready": self.model_ready(name)}
        if action == ["infer"]:
            return await self._infer_json(name, event)
        if len(action) == 1 and model.is_model:
            return await self.engine.calls.operation(model, action[0], event.body)
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
        if model.is_model:
            reply["outputs"] = await self.engine.calls.call(model, body, event.id)
        else:
            reply["outputs"] = await self.engine.run(self._event(model, body, event.id))
        return reply
