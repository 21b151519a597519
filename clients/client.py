"""Python clients for a served graph: `Client` (blocking) and `AsyncClient` (asyncio).

Both speak `servegraph.v1.Graph` over one channel: plaintext, or TLS when given a CA to trust
(`tls_ca`) or a client certificate (`tls_cert`, `tls_key`: mutual TLS); with `token`, every call
carries ``authorization: Bearer <token>``. Failed calls raise servegraph's errors
(`sg.InvalidArgument`, `sg.NotFound`, ... with `.code` naming the gRPC status), the gRPC error
kept as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servegraph import codec
from servegraph.auth import bearer
from servegraph.errors import ServingError, error_for_status
from servegraph.tls import PathLike, channel_credentials
from servegraph.v1 import graph_pb2, graph_pb2_grpc

DEFAULT_MAX_MESSAGE_MB = 64


def _channel(
    flavour: Any,
    address: str,
    max_message_mb: int,
    tls_ca: PathLike | None,
    tls_cert: PathLike | None,
    tls_key: PathLike | None,
) -> Any:
    """A channel from `flavour` (``grpc`` or ``grpc.aio``): TLS when any TLS file is named (no CA: the
    system's roots), else plaintext."""
    options = _options(max_message_mb)
    if tls_ca is None and tls_cert is None and tls_key is None:
        return flavour.insecure_channel(address, options=options)
    return flavour.secure_channel(address, channel_credentials(tls_ca, tls_cert, tls_key), options=options)


def _options(max_message_mb: int) -> list[tuple[str, int]]:
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def _request(body: Any, path: str, request_id: str | None, headers: Mapping[str, str] | None) -> Any:
    request = graph_pb2.InvokeRequest(path=path, id=request_id or "", headers=headers or {})
    codec.to_value(body, request.body, request.tensors)
    return request


def _body(response: graph_pb2.InvokeResponse) -> Any:
    return codec.from_value(response.body, response.tensors)


def _error(error: grpc.RpcError) -> ServingError:
    code = error.code()  # type: ignore[attr-defined]
    failure = error_for_status(code.name, error.details() or code.name)  # type: ignore[attr-defined]
    failure.__cause__ = error
    return failure


def _description(response: graph_pb2.DescribeResponse) -> dict[str, Any]:
    description = json_format.MessageToDict(response, preserving_proto_field_name=True)
    description["spec"] = codec.from_value(struct_pb2.Value(struct_value=response.spec))
    return description


def _stats(response: graph_pb2.StatsResponse) -> list[dict[str, Any]]:
    # field by field: MessageToDict would render the uint64 counts as JSON strings
    return [{field.name: getattr(row, field.name) for field in row.DESCRIPTOR.fields} for row in response.endpoints]


class Client:
    """Blocking client: ``with Client("127.0.0.1:50051") as c: c.invoke({"question": "hi"})``."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = None,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        token: str | None = None,
    ):
        self.address = address
        self.timeout = timeout
        self._metadata = bearer(token) if token else None
        self.channel = _channel(grpc, address, max_message_mb, tls_ca, tls_cert, tls_key)
        self._stub = graph_pb2_grpc.GraphStub(self.channel)

    def invoke(
        self,
        body: Any = None,
        path: str = "/",
        *,
        id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run one event through the graph and return the response body."""
        try:
            response = self._stub.Invoke(
                _request(body, path, id, headers), timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _error(error) from None
        return _body(response)

    def stream(
        self,
        body: Any = None,
        path: str = "/",
        *,
        id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Chunks of the response as the graph produces them; closing the iterator cancels the call."""
        call = self._stub.InvokeStream(
            _request(body, path, id, headers), timeout=timeout or self.timeout, metadata=self._metadata
        )
        try:
            for response in call:
                yield _body(response)
        except grpc.RpcError as error:
            raise _error(error) from None
        finally:
            call.cancel()

    def describe(self) -> dict[str, Any]:
        try:
            return _description(
                self._stub.Describe(graph_pb2.DescribeRequest(), timeout=self.timeout, metadata=self._metadata)
            )
        except grpc.RpcError as error:
            raise _error(error) from None

    def stats(self) -> list[dict[str, Any]]:
        """Per model endpoint: requests, failures, p50/p99 latency (ms), tokens in and out."""
        try:
            response = self._stub.Stats(graph_pb2.StatsRequest(), timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None
        return _stats(response)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server reports SERVING (every model loaded); TimeoutError after `timeout`."""
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.address} not ready after {timeout}s")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=min(left, 1.0), wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):  # type: ignore[attr-defined]
                    raise _error(error) from None
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client: ``async with AsyncClient(address) as c: await c.invoke(...)``."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = None,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        token: str | None = None,
    ):
        self.address = address
        self.timeout = timeout
        self._metadata = bearer(token) if token else None
        self.channel = _channel(grpc.aio, address, max_message_mb, tls_ca, tls_cert, tls_key)
        self._stub = graph_pb2_grpc.GraphStub(self.channel)

    async def invoke(
        self,
        body: Any = None,
        path: str = "/",
        *,
        id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = await self._stub.Invoke(
                _request(body, path, id, headers), timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _error(error) from None
        return _body(response)

    async def stream(
        self,
        body: Any = None,
        path: str = "/",
        *,
        id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        call = self._stub.InvokeStream(
            _request(body, path, id, headers), timeout=timeout or self.timeout, metadata=self._metadata
        )
        try:
            async for response in call:
                yield _body(response)
        except grpc.RpcError as error:
            raise _error(error) from None
        finally:
            call.cancel()

    async def describe(self) -> dict[str, Any]:
        try:
            return _description(
                await self._stub.Describe(graph_pb2.DescribeRequest(), timeout=self.timeout, metadata=self._metadata)
            )
        except grpc.RpcError as error:
            raise _error(error) from None

    async def stats(self) -> list[dict[str, Any]]:
        try:
            response = await self._stub.Stats(graph_pb2.StatsRequest(), timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None
        return _stats(response)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{self.address} not ready after {timeout}s")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=min(left, 1.0), wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):  # type: ignore[attr-defined]
                    raise _error(error) from None
            await asyncio.sleep(min(0.05, max(deadline - loop.time(), 0)))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
