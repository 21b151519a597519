"""`inference.GRPCInferenceService` over gRPC: a thin adapter from V2 messages to the data plane.

The service is registered by method path with a generic handler, its messages built from the
private descriptor pool of `v2_protocol` (never the default pool: tritonclient owns those names in
a process that imports both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from ..aio import answer_concurrently
from ..rpc_errors import report, reports_errors
from .dataplane import DataPlane
from .v2_protocol import (
    SERVICE,
    ModelInferResponse,
    ModelStreamInferResponse,
    decode_inputs,
    fill_response,
    message,
)
from .wire import lenient, parsed, valid_request_id

FINAL = "triton_final_response"


class InferenceService:
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ServerReadyResponse")(ready=self.dataplane.ready())

    @reports_errors
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ModelReadyResponse")(ready=self.dataplane.model_ready(parsed(request).name))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ServerMetadataResponse")(**self.dataplane.server_metadata())

    @reports_errors
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ModelMetadataResponse")(**self.dataplane.model_metadata(parsed(request).name))

    @reports_errors
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        request = parsed(request)
        valid_request_id(request.id)
        outputs = await self.dataplane.infer(request.model_name, decode_inputs(request), request.id or None)
        wanted = {output.name for output in request.outputs}
        if wanted:
            outputs = [tensor for tensor in outputs if tensor.name in wanted]
        response = _response(request)
        fill_response(response, outputs, raw=bool(request.raw_input_contents))
        return response

    @reports_errors
    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Requests run concurrently; each answers with one response per chunk, then a final one.

        A failing request answers with ``error_message`` and the stream goes on; a message that is no
        ModelInferRequest at all ends the stream with INVALID_ARGUMENT (nothing to answer it with).
        """
        async for responses in answer_concurrently((parsed(r) async for r in requests), self._stream_answers):
            for response in responses:
                yield response

    async def _stream_answers(self, request: Any) -> AsyncIterator[Any]:
        try:
            valid_request_id(request.id)
            async for outputs in self.dataplane.infer_stream(request.model_name, decode_inputs(request), request.id):
                response = _response(request)
                fill_response(response, outputs, raw=bool(request.raw_input_contents))
                response.parameters[FINAL].bool_param = False
                yield ModelStreamInferResponse(infer_response=response)
            final = _response(request)
            final.parameters[FINAL].bool_param = True
            yield ModelStreamInferResponse(infer_response=final)
        except Exception as error:
            yield ModelStreamInferResponse(error_message=report(error)[1], infer_response=_response(request))

    @reports_errors
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ModelStatisticsResponse")(model_stats=self.dataplane.statistics(parsed(request).name))


def _response(request: Any) -> Any:
    return ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)


_METHODS = {
    "ServerLive": ("ServerLiveRequest", "unary"),
    "ServerReady": ("ServerReadyRequest", "unary"),
    "ModelReady": ("ModelReadyRequest", "unary"),
    "ServerMetadata": ("ServerMetadataRequest", "unary"),
    "ModelMetadata": ("ModelMetadataRequest", "unary"),
    "ModelInfer": ("ModelInferRequest", "unary"),
    "ModelStreamInfer": ("ModelInferRequest", "stream"),
    "ModelStatistics": ("ModelStatisticsRequest", "unary"),
}


def add_to_server(service: InferenceService, server: grpc.aio.Server) -> None:
    """Register every method under its V2 path, e.g. /inference.GRPCInferenceService/ModelInfer.

    Requests parse leniently (see wire.py): the methods that read their request answer bytes that are
    not one with INVALID_ARGUMENT; the server-wide ones (live, ready, metadata) read nothing from it.
    """
    handlers = {}
    for name, (request_type, kind) in _METHODS.items():
        deserialize = lenient(message(request_type))
        serialize = _serialize
        if kind == "unary":
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                getattr(service, name), request_deserializer=deserialize, response_serializer=serialize
            )
        else:
            handlers[name] = grpc.stream_stream_rpc_method_handler(
                getattr(service, name), request_deserializer=deserialize, response_serializer=serialize
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _serialize(response: Any) -> bytes:
    return response.SerializeToString()
