"""Workers on other hosts: replicas that someone else runs (`servegraph worker`), reached over TCP.

`serve --remote NAME=ADDR[,ADDR...]` makes the hub place a worker's models here instead of spawning
it: a `RemotePool` of `RemoteWorker` replicas, one per address (a ``dns:///name:port`` address gives
one per address the name resolves to, re-resolved every `RESOLVE_INTERVAL` seconds as replicas come
and go: a Kubernetes headless Service). Each call goes to the least busy healthy replica.

The router does not run these workers, so it cannot restart them; it watches them instead. On
connecting it asks a replica what it hosts (`Info`) and refuses one whose fingerprint differs (another
graph, or another version of it). Then it checks its health every `HEALTH_INTERVAL` (and gRPC
keepalive watches the connection): a replica that says NOT_SERVING (draining) gets no new calls but
finishes those it has; one whose connection breaks, or that misses `MISSED_CHECKS` checks in a row,
is lost: its calls in flight fail with UNAVAILABLE, and it is taken back once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..errors import GraphError, Unavailable
from ..models.placement import Placement, declarations, fingerprint
from ..v1 import worker_pb2, worker_pb2_grpc
from .link import MESSAGE_OPTIONS, WorkerLink
from .pool import WorkerPool

logger = logging.getLogger("servegraph.remote")

START_TIMEOUT = float(os.environ.get("SERVEGRAPH_REMOTE_TIMEOUT", "60"))
"""Seconds each remote worker named at start has to answer before the router gives up (exit 1)."""
HEALTH_INTERVAL = 1.0
"""Seconds between two health checks of a replica (and between two attempts to reach a lost one)."""
HEALTH_TIMEOUT = 2.0
MISSED_CHECKS = 2
"""Health checks a replica may miss in a row before it counts as lost."""
CLOSED_ATTEMPTS = 3
"""Attempts in a row that a worker cuts short (it accepts, then closes) before start-up gives up: what a
worker does to a router whose TLS it refuses (a TLS 1.3 server refuses a client certificate late)."""
RESOLVE_INTERVAL = float(os.environ.get("SERVEGRAPH_REMOTE_RESOLVE_INTERVAL", "10"))
"""Seconds between two resolutions of a ``dns:///`` address."""
RETIRE_GRACE = 30.0
"""Seconds a replica that left the DNS answer has to finish its calls in flight before it is closed."""
DNS = "dns:///"

CHANNEL_OPTIONS = [
    *MESSAGE_OPTIONS,
    ("grpc.keepalive_time_ms", 10_000),  # a connection that dies silently (a host gone) is noticed
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.use_local_subchannel_pool", 1),  # a new channel to a replica inherits no reconnect backoff
]
"""The worker permits these keepalive pings (see `servegraph.workers.worker.start_serving`)."""


@dataclass(frozen=True)
class Expected:
    """What a replica must host: the worker's name, its endpoints and the fingerprint of its declarations."""

    name: str
    endpoints: tuple[str, ...]
    fingerprint: str

    @classmethod
    def of(cls, name: str, placements: dict[str, Placement]) -> Expected:
        endpoints = [endpoint for model, placement in placements.items() for endpoint in (model, *placement.proxies)]
        return cls(name, tuple(endpoints), fingerprint(declarations(placements)))


class WrongWorker(Exception):
    """The replica hosts other models than this graph's worker (another graph, or another version)."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) → host and port; ValueError if it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT or {DNS}NAME:PORT, got {address!r}")
    return host, int(port)


class RemoteWorker(WorkerLink):
    """One replica at one address, watched from the router (named by its address)."""

    def __init__(
        self,
        address: str,
        expected: Expected,
        credentials: grpc.ChannelCredentials | None,
        server_name: str | None = None,
    ):
        super().__init__(address)
        self.expected = expected
        self.credentials = credentials
        self.server_name = server_name
        """The name its TLS certificate must carry when it is reached by IP (a DNS name's replica)."""
        self.problem = "not connected yet"
        """Why it takes no calls, while it does not."""
        self._watcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Connect within `timeout`, then watch it; GraphError naming the address if it never answers,
        refuses our TLS (or we its), or hosts other models."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        closed = 0  # attempts in a row that the worker cut short
        while True:
            try:
                await self._connect()
                break
            except WrongWorker as error:
                raise GraphError(str(error)) from None
            except grpc.RpcError as error:
                why = _reason(error)
                closed = closed + 1 if _closed_by_peer(why) else 0
                if _tls_failure(why) or closed >= CLOSED_ATTEMPTS:
                    raise GraphError(
                        f"remote worker '{self.expected.name}' at {self.name} refuses the connection: {why} "
                        "(TLS on one side only, a certificate its CA did not sign, or it wants a client certificate: "
                        "see --worker-tls-ca, --worker-tls-cert and --worker-tls-key)"
                    ) from None
                if loop.time() + HEALTH_INTERVAL > deadline:
                    raise GraphError(
                        f"remote worker '{self.expected.name}' at {self.name} did not answer within {timeout:g}s: {why}"
                    ) from None
                await asyncio.sleep(HEALTH_INTERVAL)
        logger.info("remote worker '%s' at %s connected", self.expected.name, self.name)
        self.follow()

    def follow(self) -> None:
        """Watch it from now on: health checks while connected, attempts to reach it while not."""
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def stop(self, grace: float = 5.0) -> None:
        self.ready.clear()
        self.up = False
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher], timeout=grace)
        await self._close_channel()

    async def wait_ready(self, timeout: float) -> worker_pb2_grpc.WorkerStub:
        """Its stub now, or UNAVAILABLE: a replica down is not waited for (the pool picks another)."""
        if self.is_down() or self.stub is None:
            raise Unavailable(f"remote worker '{self.expected.name}' at {self.name} takes no calls: {self.problem}")
        return self.stub

    def lost(self) -> str:
        return f"its remote worker at {self.name} was lost during the call ({self.problem})"

    # -- internals ----------------------------------------------------------------------------------
    async def _connect(self) -> None:
        """A new channel; asks what the worker hosts, and takes calls over it if that is what we expect."""
        options = list(CHANNEL_OPTIONS)
        if self.server_name is not None:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self.credentials is None:
            channel = grpc.aio.insecure_channel(self.name, options=options)
        else:
            channel = grpc.aio.secure_channel(self.name, self.credentials, options=options)
        try:
            info = await worker_pb2_grpc.WorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=HEALTH_TIMEOUT)
            if info.fingerprint != self.expected.fingerprint:
                raise WrongWorker(
                    f"remote worker at {self.name} hosts other models than this graph's '{self.expected.name}': "
                    f"it serves {', '.join(info.endpoints) or 'nothing'} (fingerprint {info.fingerprint[:12]}), "
                    f"this graph's serves {', '.join(self.expected.endpoints)} "
                    f"(fingerprint {self.expected.fingerprint[:12]}); is it running the same graph, same version?"
                )
            status = await self._check(channel)
        except BaseException:
            await channel.close()
            raise
        self._open(channel, self._hung, self._closed)
        self.problem = ""
        self._serving(status == health_pb2.HealthCheckResponse.SERVING)  # not one that drains already

    async def _watch(self) -> None:
        missed = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALTH_INTERVAL):
                    await self._wake.wait()  # its call stream ended: at once, not at the next check
            self._wake.clear()
            if self.calls is not None and self.calls.closed():
                await self._drop("its connection closed")
            if self.calls is None:
                await self._reconnect()
                missed = 0
                continue
            try:
                status = await self._check(self._channel)
            except grpc.RpcError as error:
                missed += 1
                if missed >= MISSED_CHECKS:
                    await self._drop(f"missed {missed} health checks: {_reason(error)}")
                continue
            missed = 0
            self._serving(status == health_pb2.HealthCheckResponse.SERVING)

    async def _check(self, channel: grpc.aio.Channel | None) -> int:
        assert channel is not None
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT)
        return reply.status

    def _closed(self) -> None:
        """Its call stream ended: no new calls from now (before the callers of the failed ones resume);
        the watcher closes the rest and tries to reach it again."""
        if not self.is_down():
            self.problem = "its connection closed"
        self.ready.clear()
        self.up = False
        self._wake.set()

    def _serving(self, serving: bool) -> None:
        """It answers its health checks: it takes new calls while it says SERVING (not while it drains)."""
        if serving and self.is_down():
            logger.info("remote worker at %s is serving again", self.name)
            self.ready.set()
            self.up = True
        elif not serving and not self.is_down():
            logger.warning("remote worker at %s says NOT_SERVING: no new calls until it serves again", self.name)
            self.problem = "it says NOT_SERVING"
            self.ready.clear()
            self.up = False

    async def _drop(self, why: str) -> None:
        in_flight = self.in_flight
        self.problem = why
        self.ready.clear()
        self.up = False
        await self._close_channel()
        logger.warning(
            "remote worker '%s' at %s lost (%s); %d calls in flight fail", self.expected.name, self.name, why, in_flight
        )

    async def _reconnect(self) -> None:
        try:
            await self._connect()
        except WrongWorker as error:
            if self.problem != str(error):
                logger.error("%s; not using it", error)
            self.problem = str(error)
        except grpc.RpcError as error:
            self.problem = _reason(error)
        else:
            self.restarts += 1
            logger.info("remote worker '%s' at %s is back", self.expected.name, self.name)

    def _hung(self) -> None:
        """A call outlived its model's timeout by the grace: the worker is not ready until it answers
        (`is_hung`); it is not the router's to restart."""
        logger.warning(
            "remote worker at %s has not answered a call well past its model's timeout; its process may be hung",
            self.name,
        )


class RemotePool(WorkerPool):
    """The replicas of one worker (a model's own, or the pool's), at fixed addresses or found by DNS."""

    def __init__(
        self,
        name: str,
        placements: dict[str, Placement],
        targets: Sequence[str],
        credentials: grpc.ChannelCredentials | None,
    ):
        super().__init__([])
        self.expected = Expected.of(name, placements)
        self.targets = list(targets)
        self.credentials = credentials
        self._resolver: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Reach every replica within `START_TIMEOUT` (GraphError otherwise), then follow DNS names."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            try:
                found = await self._resolve()
                break
            except OSError as error:
                if loop.time() + HEALTH_INTERVAL > deadline:
                    raise GraphError(f"remote worker '{self.expected.name}': {error}") from None
                await asyncio.sleep(HEALTH_INTERVAL)
        for address, server_name in found.items():
            self.processes.append(RemoteWorker(address, self.expected, self.credentials, server_name))
        starting = [asyncio.create_task(replica.start(deadline - loop.time())) for replica in self.processes]
        try:
            done, _ = await asyncio.wait(starting, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in starting:
                task.cancel()
        if any(target.startswith(DNS) for target in self.targets):
            self._resolver = asyncio.create_task(self._follow_dns(), name=f"resolve-{self.expected.name}")

    async def stop(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*(replica.stop() for replica in self.processes), *self._retiring, return_exceptions=True)

    def pick(self) -> WorkerLink:
        """The healthy replica with the fewest calls in flight; UNAVAILABLE, saying why, if none is."""
        live = [replica for replica in self.processes if not replica.is_down()]
        if not live:
            why = "; ".join(f"{replica.name}: {replica.problem}" for replica in self.replicas())
            raise Unavailable(f"no replica of remote worker '{self.expected.name}' takes calls ({why or 'none found'})")
        return self._least_busy(live)

    def replicas(self) -> list[RemoteWorker]:
        return [replica for replica in self.processes if isinstance(replica, RemoteWorker)]

    async def _resolve(self) -> dict[str, str | None]:
        """Each replica's address, with the name its TLS certificate must carry when reached by IP
        (None: the address as given). OSError naming a DNS name that resolves to nothing."""
        found: dict[str, str | None] = {}
        for target in self.targets:
            if target.startswith(DNS):
                host, port = split_address(target.removeprefix(DNS))
                found.update(dict.fromkeys(await lookup(host, port), host))
            else:
                found[target] = None
        return found

    async def _follow_dns(self) -> None:
        """Add the replicas a DNS name gains, retire those it loses."""
        while True:
            await asyncio.sleep(RESOLVE_INTERVAL)
            try:
                found = await self._resolve()
            except OSError as error:
                logger.warning("remote worker '%s': %s; keeping its replicas as they are", self.expected.name, error)
                continue
            known = {replica.name: replica for replica in self.processes}
            for address, name in found.items():
                if address not in known:
                    logger.info("remote worker '%s': new replica %s", self.expected.name, address)
                    replica = RemoteWorker(address, self.expected, self.credentials, name)
                    self.processes.append(replica)
                    replica.follow()
            for address, replica in known.items():
                if address not in found:
                    logger.info("remote worker '%s': replica %s is gone from DNS", self.expected.name, address)
                    self.processes.remove(replica)
                    task = asyncio.create_task(self._retire(replica))
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)

    async def _retire(self, replica: WorkerLink) -> None:
        """No new calls (it has left the pool); close it once its calls in flight end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETIRE_GRACE
        while replica.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await replica.stop()


async def lookup(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, as ``ip:port`` (``[ip]:port`` for IPv6); OSError if none.
    getaddrinfo blocks, so it runs off the loop (the loop's executor)."""
    try:
        answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OSError(f"cannot resolve {host}: {error.strerror}") from None
    addresses = [f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}" for family, *_, (ip, *_) in answers]
    return list(dict.fromkeys(addresses))


def _reason(error: grpc.RpcError) -> str:
    """A failed call's status and details, on one line."""
    code = error.code()  # type: ignore[attr-defined]
    details = " ".join((error.details() or "").split())  # type: ignore[attr-defined]
    return f"{code.name}: {details}" if details else code.name


def _closed_by_peer(reason: str) -> bool:
    """Whether the worker accepted the connection and then closed it."""
    lowered = reason.lower()
    return "socket closed" in lowered or "connection reset" in lowered


def _tls_failure(reason: str) -> bool:
    """Whether a failure to connect is TLS refusing the peer (a wrong certificate or CA, TLS on one
    side only): waiting does not mend that."""
    lowered = reason.lower()
    return any(word in lowered for word in ("ssl", "tls", "handshake", "certificate"))
