"""Remote workers: a worker over TCP with mutual TLS against the same worker on the router's Unix socket,
and one against two replicas of a CPU-bound model.

Through the router, with the worker spawned by it (Unix socket) or started apart (`servegraph worker`,
reached with ``--remote``, mutual TLS on loopback): unary calls/s with 8 concurrent callers, and the
messages/s of one InvokeStream of `MESSAGES` chunks. Then a CPU-bound model (~10 ms of pure Python a
call) on 1 and on 2 replicas, 4 callers: the goal is >= 1.7x, which needs a core per replica plus
one for the router and the callers; on a 2-core machine they share the CPU. ``BENCH_ROUNDS`` rounds of
``BENCH_SECONDS``, medians reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from servegraph import codec
from servegraph.serving.launcher import LaunchedRouter, launch, launch_worker
from servegraph.v1 import graph_pb2, graph_pb2_grpc

from .bench_router import DURATION, ROUNDS, percentile
from .bench_stream import messages_per_second

CONCURRENCY = 8
BODY = {"text": "hello world", "user": {"id": 7, "tags": ["a", "b"]}}


async def calls_per_second(address: str, body: dict, concurrency: int, seconds: float) -> float:
    request = graph_pb2.InvokeRequest()
    codec.to_value(body, request.body, request.tensors)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = graph_pb2_grpc.GraphStub(channel)
        for _ in range(20):
            await stub.Invoke(request)
        stop_at = time.perf_counter() + seconds
        done = 0

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stub.Invoke(request)
                done += 1

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return done / (time.perf_counter() - began)


@contextlib.contextmanager
def certificates() -> Iterator[Any]:
    """The test suite's certificates (tests/certs.py, made with the openssl command)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from certs import make_certs

    with tempfile.TemporaryDirectory() as folder:
        yield make_certs(Path(folder))


@contextlib.contextmanager
def remote_router(target: str, model: str, replicas: int, certs: Any) -> Iterator[LaunchedRouter]:
    """A router reaching `replicas` standalone workers of `model` (with mutual TLS when given `certs`)."""
    tls: tuple[str, ...] = ()
    reach: tuple[str, ...] = ()
    if certs is not None:
        tls = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
        tls += ("--tls-client-ca", str(certs.ca))
        reach = ("--worker-tls-ca", str(certs.ca), "--worker-tls-cert", str(certs.client_cert))
        reach += ("--worker-tls-key", str(certs.client_key))
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(launch_worker(target, "--model", model, *tls)) for _ in range(replicas)]
        addresses = ",".join(worker.address for worker in workers)
        yield stack.enter_context(launch(target, "--remote", f"{model}={addresses}", *reach))


def medians(measure: Callable[[], float], rounds: int) -> float:
    return percentile([measure() for _ in range(rounds)], 0.5)


def main() -> None:
    import uvloop

    if shutil.which("openssl") is None:
        print("no openssl command to make certificates; skipped")
        return
    print(f"== a worker over TCP + mutual TLS vs over the Unix socket, through the router; median of {ROUNDS} ==")
    with certificates() as certs:
        cases = {
            "unix socket": lambda target, model: launch(target),
            "tcp + mTLS": lambda target, model: remote_router(target, model, 1, certs),
        }
        for name, start in cases.items():
            with start("benchmarks.served:echo_worker", "echo") as router:
                unary = medians(
                    lambda: uvloop.run(calls_per_second(router.address, BODY, CONCURRENCY, DURATION)), ROUNDS
                )
            with start("benchmarks.served:streaming_worker", "chunks") as router:
                stream = medians(lambda: uvloop.run(messages_per_second(router.address)), ROUNDS)
            print(f"{name:>12}: {unary:7.0f} calls/s (x{CONCURRENCY})   {stream:7.0f} stream messages/s")

    print(f"== a CPU-bound model (~10 ms of Python a call) on 1 and 2 replicas, x4 callers; median of {ROUNDS} ==")
    rates = {}
    for replicas in (1, 2):
        with remote_router("benchmarks.served:burn", "burn", replicas, None) as router:
            rates[replicas] = medians(lambda: uvloop.run(calls_per_second(router.address, {}, 4, DURATION)), ROUNDS)
        print(f"  {replicas} replica{'s' if replicas > 1 else ''}: {rates[replicas]:6.1f} calls/s")
    print(f"  2 replicas / 1: {rates[2] / rates[1]:.2f}x (goal >= 1.7x with a core per replica)")


if __name__ == "__main__":
    main()
