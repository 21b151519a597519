"""`inference.GRPCInferenceService` over gRPC: a thin adapter from V2 messages to the data plane.

The service is registered by method path with a generic handler, its messages built from the
private descriptor pool of `v2_protocol` (never the default pool: tritonclient owns those names in
a process that imports both).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from .concurrency import answer_concurrently
from .dataplane import DataPlane
from .errors import ServingError, describe, status_of
from .v2_protocol import (
    SERVICE,
    ModelInferResponse,
    ModelStreamInferResponse,
    decode_inputs,
    fill_response,
    message,
)
from .wire import lenient, parsed, request_id

logger = logging.getLogger("servegraph.v2")

FINAL = "triton_final_response"


class InferenceService:
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ServerReadyResponse")(ready=self.dataplane.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = await self._guard(context, lambda: self.dataplane.model_ready(parsed(request).name))
        return message("ModelReadyResponse")(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return message("ServerMetadataResponse")(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = await self._guard(context, lambda: self.dataplane.model_metadata(parsed(request).name))
        return message("ModelMetadataResponse")(**metadata)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._infer(request)
        except Exception as error:
            await _abort(context, error)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Requests run concurrently; each answers with one response per chunk, then a final one.

        A failing request answers with ``error_message`` and the stream goes on; a message that is no
        ModelInferRequest at all ends the stream with INVALID_ARGUMENT (nothing to answer it with).
        """
        try:
            async for responses in answer_concurrently((parsed(r) async for r in requests), self._stream_answers):
                for response in responses:
                    yield response
        except Exception as error:
            await _abort(context, error)

    async def _stream_answers(self, request: Any) -> AsyncIterator[Any]:
        try:
            request_id(request.id)
            async for outputs in self.dataplane.infer_stream(request.model_name, decode_inputs(request), request.id):
                response = _response(request)
                fill_response(response, outputs, raw=bool(request.raw_input_contents))
                response.parameters[FINAL].bool_param = False
                yield ModelStreamInferResponse(infer_response=response)
            final = _response(request)
            final.parameters[FINAL].bool_param = True
            yield ModelStreamInferResponse(infer_response=final)
        except Exception as error:
            _log(error)
            yield ModelStreamInferResponse(error_message=describe_error(error), infer_response=_response(request))

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        statistics = await self._guard(context, lambda: self.dataplane.statistics(parsed(request).name))
        return message("ModelStatisticsResponse")(model_stats=statistics)

    async def _infer(self, request: Any) -> Any:
        request = parsed(request)
        request_id(request.id)
        outputs = await self.dataplane.infer(request.model_name, decode_inputs(request), request.id or None)
        wanted = {output.name for output in request.outputs}
        if wanted:
            outputs = [tensor for tensor in outputs if tensor.name in wanted]
        response = _response(request)
        fill_response(response, outputs, raw=bool(request.raw_input_contents))
        return response

    async def _guard(self, context: grpc.aio.ServicerContext, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as error:
            await _abort(context, error)


def _response(request: Any) -> Any:
    return ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)


def describe_error(error: Exception) -> str:
    return str(error) if isinstance(error, ServingError) else describe(error)


def _log(error: Exception) -> None:
    if not isinstance(error, ServingError):
        logger.exception("V2 request failed unexpectedly", exc_info=error)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    _log(error)
    await context.abort(grpc.StatusCode[status_of(error)], describe_error(error))


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
