"""The model worker process: loads its models, then serves `servegraph.v1.Worker` (`service.py`) and
gRPC health.

Its models' declarations come as JSON: each model with the proxies it serves and their artifacts,
so a call names only its endpoint. Models are imported by path and loaded here, never in the
router. Sync predicts run on one worker thread, so a worker process handles one sync call (or one
batch, for a model with ``predict_batch``) at a time (scale with processes); async predicts run on
the worker's event loop. gRPC health says SERVING once every model has loaded. It runs in one of two
ways:

- spawned by its router (``--socket``, ``--parent``): the declarations arrive on stdin, it serves on
  a Unix socket, the router stops it by closing its stdin; signals are the router's to handle, and
  the worker exits at once when the router dies (`leave_shutdown_to`);
- standalone (``--listen``, what ``servegraph worker`` execs into): the declarations come in a file
  descriptor, it serves TCP (TLS optional) for routers on other hosts, and whoever started it stops
  it with SIGTERM, which drains it (`WorkerService.drain`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from servegraph.models.placement import fingerprint
from servegraph.tls import CredentialsError, server_credentials
from servegraph.v1 import worker_pb2_grpc

from .service import WorkerService, load_models

logger = logging.getLogger("servegraph.worker")


def leave_shutdown_to(parent: int, socket: str, stop: Callable[[], None]) -> None:
    """Stop when the router says so, serve on through signals meant for it, and never outlive it.

    SIGTERM and SIGINT do nothing: a signal to the whole process group (Ctrl-C in a terminal,
    systemd's stop) reaches the workers too, and the router drains its in-flight calls only if its
    workers go on serving them. The router asks a worker to stop by closing its stdin (`stop` runs on
    the event loop). Its death closes stdin too, and then a thread that needs nothing of the event loop
    (which a model may block for any time) removes what the router left behind and exits at once.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)  # not SIG_IGN, which processes a model starts would inherit
        signal.siginterrupt(sig, False)
    loop = asyncio.get_running_loop()

    def asked_to_stop() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: stopping already
            loop.call_soon_threadsafe(stop)

    threading.Thread(target=_watch_router, args=(parent, socket, asked_to_stop), name="router", daemon=True).start()


def _ignore(signum: int, frame: object) -> None:
    """A signal meant for the router (see `leave_shutdown_to`)."""


def _watch_router(parent: int, socket: str, asked_to_stop: Callable[[], None]) -> None:
    """Poll stdin (its end means stop) and the router (a pidfd, else its pid every 0.2 s) until it dies."""
    watch = select.poll()
    stdin = sys.stdin.fileno()
    watch.register(stdin, select.POLLIN)
    try:
        router: int | None = os.pidfd_open(parent)
        watch.register(router, select.POLLIN)
    except (AttributeError, OSError):  # not Linux, or an old kernel; or the router is gone already
        router = None
    while os.getppid() == parent:
        ready = {fd for fd, _ in watch.poll(None if router is not None else 200)}
        if router in ready:
            break
        if stdin in ready and not os.read(stdin, 1 << 12):  # the router's end closed: asked to stop, or it died
            watch.unregister(stdin)
            asked_to_stop()
    clean_up_after_router(socket)
    os._exit(0)


def clean_up_after_router(socket: str) -> None:
    """A router that died (SIGKILL) left its private socket directory behind: its last worker removes it.

    A live router removes both itself, and needs the directory to restart a worker that stopped.
    """
    with contextlib.suppress(OSError):
        os.unlink(socket)
    with contextlib.suppress(OSError):  # fails while other workers' sockets are still in it
        os.rmdir(os.path.dirname(socket))


class PortUnavailable(OSError):
    """The standalone worker's address cannot be bound: one line for the operator, not a traceback."""


async def start_serving(
    name: str, placements: dict[str, Any], address: str, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, WorkerService, int]:
    """Bind `address` (first: a taken port fails before the models load), load the models, serve.

    Returns the server, its health (SERVING), the worker service and the bound port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port another worker holds is refused, not shared
            ("grpc.keepalive_permit_without_calls", 1),  # the routers' keepalive pings, also between calls
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ]
    )
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if not port:
        raise PortUnavailable(f"cannot listen on {address}: the port is taken, or the address is not this host's")
    service = WorkerService(name, load_models(placements), fingerprint(placements))
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, service, port


async def serve_router(name: str, socket: str, placements: dict[str, Any], parent: int) -> None:
    """Spawned: serve the router on a Unix socket until it closes our stdin (or dies)."""
    stopping = asyncio.Event()
    leave_shutdown_to(parent, socket, stopping.set)
    server, *_ = await start_serving(name, placements, f"unix:{socket}")
    print(f"serving worker '{name}' on unix:{socket}", flush=True)
    await stopping.wait()
    await server.stop(1.0)


async def serve_standalone(
    name: str,
    placements: dict[str, Any],
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    grace: float,
) -> None:
    """Standalone: serve TCP until SIGTERM or SIGINT, then turn NOT_SERVING and drain for `grace` seconds."""
    shown_host = f"[{host}]" if ":" in host else host
    server, health_servicer, service, bound = await start_serving(name, placements, f"{shown_host}:{port}", credentials)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from now on: while models load, a signal just ends the process
        loop.add_signal_handler(sig, stopping.set)
    print(f"serving worker '{name}' on {shown_host}:{bound}", flush=True)
    await stopping.wait()
    logger.info("worker '%s' draining: %d calls in flight, up to %.1fs", name, service.in_flight, grace)
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await service.drain(grace)
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servegraph-worker")
    parser.add_argument("--name", required=True)
    parser.add_argument("--socket", help="spawned: the Unix socket to serve (declarations on stdin)")
    parser.add_argument("--parent", type=int, help="spawned: the router's pid")
    parser.add_argument("--listen", help="standalone: HOST:PORT to serve")
    parser.add_argument("--placements-fd", type=int, help="standalone: a file descriptor holding the declarations")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    parser.add_argument("--grace", type=float, default=10.0, help="standalone: seconds a drain may take")
    args = parser.parse_args(argv)
    standalone = args.listen is not None
    if standalone == (args.socket is not None) or (standalone and args.placements_fd is None):
        parser.error("give --socket and --parent (spawned), or --listen and --placements-fd (standalone)")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        parser.error("--tls-cert and --tls-key go together, and --tls-client-ca needs them")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout)
    try:
        if standalone:
            with os.fdopen(args.placements_fd, "rb") as declarations:
                placements = json.load(declarations)
            credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
            host, _, port = args.listen.rpartition(":")
            uvloop.run(serve_standalone(args.name, placements, host.strip("[]"), int(port), credentials, args.grace))
        else:
            placements = json.loads(sys.stdin.buffer.readline())  # one line: stdin stays open until the router stops us
            uvloop.run(serve_router(args.name, args.socket, placements, args.parent))
    except (PortUnavailable, CredentialsError) as error:
        print(f"servegraph: {error}", file=sys.stderr, flush=True)
        return 1
    except Exception:
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        return 3
    # Stopped: exit now. A normal exit would first wait for a predict still running on the predict
    # thread, however long it takes.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
