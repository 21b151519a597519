"""The router process: serves a graph over gRPC (grpc.aio on uvloop) with health and reflection.

Optionally over TLS (`credentials`, from `servegraph.tls`), with bearer tokens (`tokens`: the
`servegraph.auth` interceptor; health stays open), and without reflection (`reflection=False`).
Workers named in `remotes` run on other hosts (reached with `worker_credentials`).

Start-up order matters to clients: the port opens first with health NOT_SERVING, the engine
loads (workers start, models load), and only then does health say SERVING. From then on health
says SERVING while every model has a worker that takes calls (a remote model: a healthy replica),
NOT_SERVING while one has none. On SIGTERM/SIGINT health turns NOT_SERVING, in-flight calls get
`grace` seconds to finish, then workers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import start_http_server

from ..auth import TokenAuth
from ..dsl.graph import Graph
from ..engine.engine import Engine
from ..hosting.hub import ModelHub
from ..v1 import graph_pb2
from . import graph_service, v2_protocol, v2_service
from .dataplane import DataPlane
from .monitoring import Monitor, records_for

logger = logging.getLogger("servegraph.router")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_WORKER_PORT = 50052
"""Where `servegraph worker` listens by default (and the manifests' worker pods)."""
DEFAULT_MAX_MESSAGE_MB = 64
GRAPH_SERVICE = graph_pb2.DESCRIPTOR.services_by_name["Graph"].full_name
HEALTH_INTERVAL = 0.5
"""Seconds between two looks at whether every model has a worker that takes calls."""


class Router:
    """One graph served on one port."""

    def __init__(
        self,
        graph: Graph,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        metrics_port: int | None = None,
        records: str | Path | Callable[[dict[str, Any]], Any] | None = None,
        credentials: grpc.ServerCredentials | None = None,
        tokens: Collection[str] | None = None,
        reflection: bool = True,
        remotes: Mapping[str, Sequence[str]] | None = None,
        worker_credentials: grpc.ChannelCredentials | None = None,
    ):
        models = ModelHub(graph, remotes, worker_credentials)
        self.monitor = Monitor(
            graph.name,
            records=records_for(graph, records),
            workers=lambda: models.workers,
            endpoints=models.endpoints.models(),
        )
        self.engine = Engine(graph, models, monitor=self.monitor)
        self.metrics_port = metrics_port
        self._metrics_server: Any = None
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.credentials = credentials
        self.health = health.aio.HealthServicer()
        self._health_follower: asyncio.Task[None] | None = None
        limit = max_message_mb * 1024 * 1024
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
            interceptors=[TokenAuth(tokens)] if tokens else None,
        )
        dataplane = DataPlane(self.engine)
        graph_service.add_to_server(graph_service.GraphService(self.engine, dataplane), self.server)
        v2_service.add_to_server(v2_service.InferenceService(dataplane), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if reflection:
            enable_reflection(self.server)

    async def start(self) -> int:
        """Open the port, load the graph, then report SERVING; returns the bound port."""
        if self.metrics_port is not None:  # first, and before the models load: a taken port fails at once
            try:
                self._metrics_server, _ = start_http_server(
                    self.metrics_port, addr=self.host, registry=self.monitor.registry
                )
            except BaseException as error:
                self._release()
                if isinstance(error, OSError):
                    raise PortUnavailable(
                        f"cannot serve metrics on {_bracket(self.host)}:{self.metrics_port}: {error.strerror or error}"
                    ) from error
                raise
            self.metrics_port = self._metrics_server.server_port
        address = f"{_bracket(self.host)}:{self.requested_port}"
        try:  # last of the ports: gRPC keeps a bound port until the server is collected, even if never started
            if self.credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, self.credentials)
        except RuntimeError:  # grpcio raises where older versions returned 0
            self.port = 0
        if not self.port:
            self._release()
            raise PortUnavailable(f"cannot listen on {address}: the port is taken, or the address is not this host's")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        try:
            await self.engine.start()
        except BaseException:
            await self.server.stop(None)
            self._release()
            raise
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.engine.models.hosts_workers():
            self._health_follower = asyncio.create_task(self._follow_workers(), name="router-health")
        return self.port

    async def stop(self, grace: float | None = 5.0) -> None:
        if self._health_follower is not None:
            self._health_follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_follower
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
        await self.engine.stop()
        self._release()

    def _release(self) -> None:
        """Free the metrics port and close the record sink (after a stop, or a start that failed)."""
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()  # frees the port now, not when collected
            self._metrics_server = None
        self.monitor.close()

    async def _follow_workers(self) -> None:
        """Health follows the workers: NOT_SERVING while some model has none that takes calls."""
        serving = True
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            if self.engine.models.serving() != serving:
                serving = not serving
                logger.log(
                    logging.INFO if serving else logging.WARNING,
                    "health: %s",
                    "SERVING again" if serving else "NOT_SERVING: a model has no worker that takes calls",
                )
                status = (
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self._set_health(status)

    async def _set_health(self, status: int) -> None:
        await self.health.set("", status)
        await self.health.set(GRAPH_SERVICE, status)


class PortUnavailable(OSError):
    """The gRPC or the metrics port cannot be bound: one line for the operator, not a traceback."""


def enable_reflection(server: grpc.aio.Server) -> None:
    """Lets grpcurl and other tools list and call the services without .proto files."""
    reflection.enable_server_reflection(
        [
            GRAPH_SERVICE,
            v2_protocol.SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
        pool=reflection_pool(),
    )


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every served service in one pool, the V2 contract included (it is not in the default pool)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: descriptor.FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))
        added.add(file.name)

    for file in (graph_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        add(file)
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(v2_protocol.FILE.serialized_pb))
    return pool


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def serve(
    graph: Graph,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
    grace: float = 5.0,
    metrics_port: int | None = None,
    records: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
    tokens: Collection[str] | None = None,
    reflection: bool = True,
    remotes: Mapping[str, Sequence[str]] | None = None,
    worker_credentials: grpc.ChannelCredentials | None = None,
    on_ready: Callable[[Router], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    router = Router(
        graph,
        host,
        port,
        max_message_mb=max_message_mb,
        metrics_port=metrics_port,
        records=records,
        credentials=credentials,
        tokens=tokens,
        reflection=reflection,
        remotes=remotes,
        worker_credentials=worker_credentials,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await router.start()
    if on_ready is not None:
        on_ready(router)
    await stopping.wait()
    logger.info("stopping: draining in-flight calls for up to %.1fs", grace)
    await router.stop(grace)


def run(graph: Graph, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **options: object) -> None:
    """Blocking entry point: `serve` on a uvloop event loop."""
    import uvloop

    uvloop.run(serve(graph, host, port, **options))  # type: ignore[arg-type]
