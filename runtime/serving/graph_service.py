"""The `servegraph.v1.Graph` gRPC service: a thin adapter from protobuf messages to the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from .. import codec
from ..dsl.event import Event, new_event_id
from ..engine.engine import Engine
from ..errors import InvalidArgument, ServingError, Unavailable
from ..redact import redacted
from ..rpc_errors import reports_errors, request_id
from ..v1 import graph_pb2, graph_pb2_grpc
from .dataplane import DataPlane
from .wire import lenient, parsed, valid_request_id

REQUEST_ID_HEADER = "x-request-id"
SERVICE = graph_pb2.DESCRIPTOR.services_by_name["Graph"].full_name


class GraphService(graph_pb2_grpc.GraphServicer):
    def __init__(self, engine: Engine, dataplane: DataPlane):
        self.engine = engine
        self.dataplane = dataplane

    @reports_errors
    async def Invoke(self, request: graph_pb2.InvokeRequest, context: grpc.aio.ServicerContext) -> Any:
        event = self._event(request, context)
        if self.dataplane.handles(event.path):
            result = await self.dataplane.invoke_path(event)
        else:
            result = await self.engine.run(event)
        return _response(event.id, result)

    @reports_errors
    async def InvokeStream(
        self, request: graph_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[graph_pb2.InvokeResponse]:
        event = self._event(request, context)
        chunks = self.engine.stream(event)
        try:
            async for chunk in chunks:
                yield _response(event.id, chunk)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    @reports_errors
    async def Describe(self, request: graph_pb2.DescribeRequest, context: grpc.aio.ServicerContext) -> Any:
        graph = self.engine.graph
        spec = struct_pb2.Struct()
        json_format.ParseDict(_jsonable(redacted(graph.to_dict())), spec)  # never a secret parameter's value
        outlets = graph.outlets()
        return graph_pb2.DescribeResponse(
            name=graph.name,
            spec=spec,
            steps=[
                graph_pb2.StepInfo(
                    name=name, kind=step.kind, after=step.after, outlets=outlets[name], responder=step.responder
                )
                for name, step in graph.steps.items()
            ],
            endpoints=[graph_pb2.Endpoint(**endpoint) for endpoint in self.engine.endpoints.describe()],
            mermaid=graph.plot(),
            streaming=self.engine.can_stream,
        )

    @reports_errors
    async def Stats(self, request: graph_pb2.StatsRequest, context: grpc.aio.ServicerContext) -> Any:
        endpoints = []
        for endpoint in sorted(self.engine.endpoints.models(), key=lambda endpoint: endpoint.name):
            stats = endpoint.stats
            endpoints.append(
                graph_pb2.EndpointStats(
                    name=endpoint.name,
                    requests=stats.requests,
                    failures=stats.failures,
                    p50_ms=stats.quantile(0.5) * 1e3,
                    p99_ms=stats.quantile(0.99) * 1e3,
                    tokens_in=stats.tokens_in,
                    tokens_out=stats.tokens_out,
                    in_flight=stats.in_flight,
                )
            )
        return graph_pb2.StatsResponse(endpoints=endpoints)

    def _event(self, request: graph_pb2.InvokeRequest, context: grpc.aio.ServicerContext) -> Event:
        if not self.engine.ready:
            raise Unavailable(f"graph '{self.engine.graph.name}' is still loading")
        request = parsed(request)
        event_id = valid_request_id(request.id or _metadata(context).get(REQUEST_ID_HEADER) or new_event_id())
        context.set_trailing_metadata(((REQUEST_ID_HEADER, event_id),))
        body = codec.from_value(request.body, request.tensors)
        request_id.set(event_id)
        return Event(body, id=event_id, path=request.path or "/", headers=request.headers)


def add_to_server(service: GraphService, server: grpc.aio.Server) -> None:
    """`graph_pb2_grpc.add_GraphServicer_to_server`, but Invoke and InvokeStream parse leniently
    (see wire.py): bytes that are no InvokeRequest end as INVALID_ARGUMENT, not UNKNOWN."""
    invoke = {"request_deserializer": lenient(graph_pb2.InvokeRequest), "response_serializer": _serialize}
    handlers = {
        "Invoke": grpc.unary_unary_rpc_method_handler(service.Invoke, **invoke),
        "InvokeStream": grpc.unary_stream_rpc_method_handler(service.InvokeStream, **invoke),
        "Describe": grpc.unary_unary_rpc_method_handler(
            service.Describe, request_deserializer=graph_pb2.DescribeRequest.FromString, response_serializer=_serialize
        ),
        "Stats": grpc.unary_unary_rpc_method_handler(
            service.Stats, request_deserializer=graph_pb2.StatsRequest.FromString, response_serializer=_serialize
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _serialize(response: Any) -> bytes:
    return response.SerializeToString()


def _response(event_id: str, result: Any) -> graph_pb2.InvokeResponse:
    response = graph_pb2.InvokeResponse(id=event_id)
    try:
        codec.to_value(result, response.body, response.tensors)
    except InvalidArgument as failure:  # the request was fine: the graph's output is at fault
        raise ServingError(f"the graph's response cannot be sent back: {failure}") from None
    return response


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


def _jsonable(value: Any) -> Any:
    """Class arguments may hold any object; Describe shows those it cannot encode by their repr."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
