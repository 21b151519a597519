"""Invoke through the router vs a bare grpc.aio echo server (the floor for Python gRPC here).

Both servers run in their own process; one client process drives them with 1 and 8 concurrent
asyncio callers on one channel, in ``BENCH_ROUNDS`` (3) rounds of ``BENCH_SECONDS`` (2 s), the two
back to back and who goes first alternating. On a 2-core machine the client and the server share the
CPU, so throughput moves with whatever else runs; the per-request cost is therefore measured as the
server process's CPU time per request (from /proc), and the ratio (the median of the rounds')
compares those.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from servegraph import codec
from servegraph.serving.launcher import launch
from servegraph.v1 import graph_pb2, graph_pb2_grpc

DURATION = float(os.environ.get("BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BODY = {"text": "hello world", "user": {"id": 7, "tags": ["a", "b"]}}
T = TypeVar("T")
ADDRESS_LINE = re.compile(r"on (127\.0\.0\.1:\d+)")


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """The bare grpc.aio echo server of `served.py`, in its own process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.served"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if match := ADDRESS_LINE.search(line):
                yield match[1], process.pid
                break
        else:
            raise RuntimeError("the echo server did not start")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def load(address: str, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    request = graph_pb2.InvokeRequest()
    codec.to_value(BODY, request.body, request.tensors)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = graph_pb2_grpc.GraphStub(channel)
        for _ in range(200):
            await stub.Invoke(request)
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await stub.Invoke(request)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return len(latencies) / elapsed, latencies


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[T], q: float, key: Callable[[T], Any] | None = None) -> T:
    """The item at quantile `q`, ordered by `key` (a whole run, not an average of runs, when picking rounds)."""
    ordered = sorted(values, key=key)  # type: ignore[type-var, arg-type]
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    import uvloop

    print(f"== Invoke: router (3-step graph) vs bare grpc.aio echo server, median of {ROUNDS} rounds ==")
    with echo_server() as echo, launch("benchmarks.served:three_step") as router:
        servers = {"echo": echo, "router": (router.address, router.process.pid)}
        for concurrency in (1, 8):
            runs: dict[str, list[tuple[float, float, list[float]]]] = {"echo": [], "router": []}
            for turn in range(ROUNDS):  # back to back, who goes first alternating: the VM's drift hits both
                for name in ("echo", "router") if turn % 2 == 0 else ("router", "echo"):
                    address, pid = servers[name]
                    before = cpu_seconds(pid)
                    rate, latencies = uvloop.run(load(address, concurrency, DURATION))
                    runs[name].append(((cpu_seconds(pid) - before) / (len(latencies) + 200), rate, latencies))
            for name, measured in runs.items():
                cost, rate, latencies = percentile(measured, 0.5, key=lambda run: run[0])
                print(
                    f"{name:>6} x{concurrency}: {rate:8.0f} req/s   p50 {percentile(latencies, 0.5) * 1e3:6.2f} ms"
                    f"   p99 {percentile(latencies, 0.99) * 1e3:6.2f} ms   server CPU {cost * 1e6:5.0f} us/req"
                )
            ratios = sorted(mine[0] / bare[0] for mine, bare in zip(runs["router"], runs["echo"], strict=True))
            rounds = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            print(
                f"  per-request server cost, router / echo at x{concurrency}: {percentile(ratios, 0.5):.2f}x"
                f" (target <= 1.3x); rounds {rounds}"
            )


if __name__ == "__main__":
    main()
