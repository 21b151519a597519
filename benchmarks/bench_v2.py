"""V2 ModelInfer (a 16-float FP32 tensor): servegraph and MLServer 1.7 side by side, in the same run.

servegraph serves `benchmarks.served:v2_models`: the Identity model in the router (`in_router`) and in a
dedicated worker (`in_worker`). MLServer (from `.venv-mlserver`, installed on first use, see `mlserver_side.py`)
serves the same identity model in its main process (`parallel_workers: 0`) and through its default inference
pool (`parallel_workers: 1`). Dynamic batching: `in_worker_batched` (``predict_batch``, ``max_batch_size=8``,
the default 2 ms delay) against MLServer's pool with its adaptive batching on (``max_batch_size`` 8,
``max_batch_time`` 2 ms), at 8 and 32 callers. All servers run at once, each in its own process; one client
drives each with the same `load` (prebuilt request bytes over a plain grpc.aio channel, 1, 8 and 32 callers).
Each case runs
``BENCH_ROUNDS`` rounds (3) of ``BENCH_SECONDS`` (2 s) on each side, MLServer and servegraph back to back and
who goes first alternating, so that both see the same machine. Each servegraph line ends with the median of the
per-round ratios of its throughput over the MLServer configuration it compares with: in_router vs MLServer
in-process, in_worker vs MLServer's worker pool. server CPU is the CPU time per request of the process that
terminates gRPC (servegraph's router, MLServer's main process; workers excluded). If MLServer cannot be installed
or started, one line says why and servegraph's numbers come alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

import grpc
import numpy as np

from servegraph.serving.launcher import LaunchedRouter, launch
from servegraph.serving.v2_protocol import ModelInferRequest

from . import mlserver_side
from .bench_router import cpu_seconds, percentile

DURATION = float(os.environ.get("BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARMUP = 100
# servegraph model, the MLServer configuration it is compared with, the target throughput ratio at 8 clients.
CASES = (
    ("in_router", "in-process", 1.5),
    ("in_worker", "worker pool", 2.0),
    ("in_worker_batched", "worker pool, batching", 2.0),
)


@dataclass
class Result:
    rate: float
    p50: float
    p99: float
    cpu: float

    def line(self, name: str, concurrency: int) -> str:
        return (
            f"{name:>20} x{concurrency}: {self.rate:7.0f} req/s   p50 {self.p50 * 1e3:5.2f} ms"
            f"   p99 {self.p99 * 1e3:5.2f} ms   server CPU {self.cpu * 1e6:4.0f} us/req"
        )


def request_bytes(model: str) -> bytes:
    request = ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return request.SerializeToString()


async def load(address: str, model: str, concurrency: int) -> tuple[float, list[float]]:
    """Throughput and latencies of `concurrency` callers on one channel: bytes in, bytes out, so the cost is the
    server's, and MLServer and servegraph get the very same client."""
    payload = request_bytes(model)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(WARMUP):
            await infer(payload)
        stop_at = time.perf_counter() + DURATION

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await infer(payload)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return len(latencies) / (time.perf_counter() - began), latencies


def measure(address: str, pid: int, model: str, concurrency: int) -> Result:
    """One case, with the CPU time the server's gRPC process spent on it (warm-up calls included)."""
    import uvloop

    before = cpu_seconds(pid)
    rate, latencies = uvloop.run(load(address, model, concurrency))
    cpu = (cpu_seconds(pid) - before) / (len(latencies) + WARMUP)
    return Result(rate, percentile(latencies, 0.5), percentile(latencies, 0.99), cpu)


def one_line(error: BaseException) -> str:
    """gRPC errors print over several lines; the benchmark's output keeps one line per event."""
    return " ".join(str(error).split())[:200]


def start_mlservers(stack: contextlib.ExitStack) -> dict[str, mlserver_side.Served]:
    """The MLServer configurations that could be started; each one that could not is one printed line."""
    try:
        executable = mlserver_side.ensure_installed()
    except mlserver_side.Unavailable as error:
        print(f"MLServer could not be installed ({error}); servegraph's numbers alone", flush=True)
        return {}
    served = {}
    for config, settings in mlserver_side.CONFIGS.items():
        try:
            served[config] = stack.enter_context(mlserver_side.serve(executable, settings))
        except Exception as error:  # never let MLServer take the benchmark down
            print(f"MLServer {config} did not start ({one_line(error)}); compared without it", flush=True)
    return served


def median(results: list[Result]) -> Result:
    return percentile(results, 0.5, key=lambda result: result.rate)


def compare(
    router: LaunchedRouter, mlservers: dict[str, mlserver_side.Served], model: str, config: str, concurrency: int
) -> None:
    """`ROUNDS` rounds of MLServer and servegraph back to back (who goes first alternating); prints the median
    run of each and the median of the per-round ratios (paired, so the VM's drift cancels out)."""
    ours: list[Result] = []
    theirs: list[Result] = []
    for turn in range(ROUNDS):
        for side in ("mlserver", "servegraph") if turn % 2 == 0 else ("servegraph", "mlserver"):
            if side == "servegraph":
                ours.append(measure(router.address, router.process.pid, model, concurrency))
            elif server := mlservers.get(config):
                try:
                    theirs.append(measure(server.address, server.pid, mlserver_side.MODEL, concurrency))
                except Exception as error:  # a failing MLServer leaves servegraph's numbers standing
                    print(f"MLServer {config} failed ({one_line(error)}); compared without it", flush=True)
                    del mlservers[config]
    paired = len(theirs) == len(ours)
    if paired:
        print(median(theirs).line(f"MLServer {config}", concurrency), flush=True)
    line = median(ours).line(model, concurrency)
    if paired:
        ratios = sorted(mine.rate / other.rate for mine, other in zip(ours, theirs, strict=True))
        target = next(goal for name, _, goal in CASES if name == model)
        wanted = f" (target >= {target:g}x)" if concurrency == 8 else ""
        rounds = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        line += f"   {percentile(ratios, 0.5):.2f}x MLServer {config}{wanted}; rounds {rounds}"
    print(line, flush=True)


def main() -> None:
    print(
        f"== V2 ModelInfer, FP32[1,16]: servegraph (in the router / a worker) vs MLServer {mlserver_side.VERSION},"
        f" median of {ROUNDS} rounds =="
    )
    with contextlib.ExitStack() as stack:
        router = stack.enter_context(launch("benchmarks.served:v2_models"))
        mlservers = start_mlservers(stack)
        for concurrency in (1, 8, 32):
            for model, config, _ in CASES:
                if concurrency == 32 and model == "in_router":
                    continue
                compare(router, mlservers, model, config, concurrency)


if __name__ == "__main__":
    main()
