"""Router throughput with monitoring off, on with a file sink, and on with a deliberately slow callable sink.

The graph is one ModelRunnerStep with two models in the router (naive), so every request makes two model
calls, and with monitoring on, two records. Each mode is a router of its own process (a `Router` run on
uvloop, as `servegraph serve` runs it, so that the slow sink can be a Python callable); one client process
drives each with 8 concurrent asyncio callers on one channel, the modes taking turns (in a rotating order) for
a few rounds so that whatever else runs on the machine hits them alike; on a shared 2-core machine single
turns still vary by +-10%, so compare medians. Reported: median throughput, the router's CPU time per
request (from /proc), and the ratio to monitoring off (target >= 0.9x). The slow sink sleeps per record, so
its queue fills and records are dropped (read back from the router's metrics) while requests go on.

    python -m benchmarks monitoring          # BENCH_SECONDS (default 1.5) per turn, BENCH_ROUNDS (default 5)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc

import servegraph as sg
from servegraph import codec
from servegraph.v1 import graph_pb2, graph_pb2_grpc

DURATION = float(os.environ.get("BENCH_SECONDS", "1.5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONCURRENCY = 8
WARM_UP = 50
SLOW_SINK_SECONDS = 0.005
"""What the slow sink sleeps per record: 200 records/s, far below what the router produces."""
MODES = ("off", "file", "slow")
BODY = {"text": "hello world", "values": list(range(16)), "user": {"id": 7, "tags": ["a", "b"]}}
READY_LINE = re.compile(r"bench-monitoring (\w+) on (\S+) metrics (\d+)")


class Scale(sg.Model):
    def predict(self, body: dict) -> dict:
        factor = self.get_param("factor", 2)
        return {"values": [value * factor for value in body["values"]], "text": body["text"]}


def build(monitoring: bool) -> sg.Graph:
    graph = sg.Graph("bench-monitoring", monitoring=monitoring)
    runner = sg.ModelRunnerStep(name="models")
    runner.add_model("double", Scale, "naive", factor=2)
    runner.add_model("triple", Scale, "naive", factor=3)
    graph.to(runner).respond()
    return graph


# -- the router, in a child process ----------------------------------------------------------------------


async def serve_mode(mode: str, records_dir: str) -> None:
    from servegraph.serving.router import Router

    draining = threading.Event()

    def slow_sink(record: dict) -> None:
        if not draining.is_set():  # at shutdown the queued records drain at once
            time.sleep(SLOW_SINK_SECONDS)

    records = {"off": None, "file": str(Path(records_dir) / "records.jsonl"), "slow": slow_sink}[mode]
    router = Router(build(mode != "off"), "127.0.0.1", 0, metrics_port=0, records=records)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    port = await router.start()
    print(f"bench-monitoring {mode} on 127.0.0.1:{port} metrics {router.metrics_port}", flush=True)
    await stopping.wait()
    draining.set()
    await router.stop(1.0)


@contextlib.contextmanager
def routers(records_dir: str) -> Iterator[dict[str, tuple[str, int, int]]]:
    """One router process per mode: mode -> (address, pid, metrics port)."""
    started: dict[str, tuple[str, int, int]] = {}
    processes = []
    try:
        for mode in MODES:
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_monitoring", mode, records_dir],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            processes.append(process)
            assert process.stdout is not None
            line = process.stdout.readline()  # EOF (a failed start) ends the wait
            if not (match := READY_LINE.search(line)):
                raise RuntimeError(f"the {mode} router did not start: {line!r}")
            started[mode] = (match[2], process.pid, int(match[3]))
        yield started
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# -- the client ------------------------------------------------------------------------------------------


async def load(address: str, seconds: float) -> int:
    """Requests answered in `seconds` by CONCURRENCY callers on one channel (after a warm-up)."""
    request = graph_pb2.InvokeRequest()
    codec.to_value(BODY, request.body, request.tensors)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = graph_pb2_grpc.GraphStub(channel)
        for _ in range(WARM_UP):
            await stub.Invoke(request)
        done = 0
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stub.Invoke(request)
                done += 1

        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return done


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def main() -> None:
    import uvloop

    print(f"== Router throughput with monitoring: 2 models in the router, {CONCURRENCY} callers ==")
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    costs: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as records_dir, routers(records_dir) as started:
        for round_ in range(ROUNDS):
            for mode in MODES[round_ % 3 :] + MODES[: round_ % 3]:  # each mode takes each place in turn
                address, pid, _ = started[mode]
                cpu = cpu_seconds(pid)
                done = uvloop.run(load(address, DURATION))
                rates[mode].append(done / DURATION)
                costs[mode].append((cpu_seconds(pid) - cpu) / (done + WARM_UP))
        dropped = metric(started["slow"][2], "servegraph_records_dropped_total")
        file_dropped = metric(started["file"][2], "servegraph_records_dropped_total")
        time.sleep(0.2)  # let the file sink's writer catch up before counting lines
        lines = len((Path(records_dir) / "records.jsonl").read_text().splitlines())
    base_rate, base_cost = statistics.median(rates["off"]), statistics.median(costs["off"])
    labels = {"off": "monitoring off", "file": "on, file sink", "slow": "on, slow callable sink"}
    for mode in MODES:
        rate, cost = statistics.median(rates[mode]), statistics.median(costs[mode])
        print(
            f"{labels[mode]:>24}: {rate:7.0f} req/s ({rate / base_rate:4.2f}x)"
            f"   router CPU {cost * 1e6:5.0f} us/req ({cost / base_cost:4.2f}x)"
            f"   rounds: {', '.join(f'{value:.0f}' for value in rates[mode])}"
        )
    print(f"  file sink: {lines} records written, {file_dropped:.0f} dropped")
    print(f"  slow sink ({SLOW_SINK_SECONDS * 1e3:.0f} ms/record): {dropped:.0f} records dropped, requests unaffected")
    worst = min(statistics.median(rates[mode]) for mode in ("file", "slow")) / base_rate
    print(f"  throughput with monitoring on / off: {worst:.2f}x at worst (target >= 0.9x)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in MODES:
        import uvloop

        uvloop.run(serve_mode(sys.argv[1], sys.argv[2]))
    else:
        main()
