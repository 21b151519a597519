"""Model execution mechanisms: a ModelRunnerStep with two trivial models, on each mechanism.

Each mechanism runs through the mock server (``async with`` + ``await atest()``, 8 in flight) and
through a served gRPC router (``servegraph serve``, 8 concurrent AsyncClient callers), against the
in-router ``naive`` mechanism as the baseline of the same run. Then process_pool scaling: a CPU-bound
numpy model (~8 ms a call with one BLAS thread, the workers' default) on 1 and on 2 pool processes.

Every case runs for ``BENCH_SECONDS`` (2 s by default). On a 2-core machine the callers, the router and
the workers share the CPU, so worker mechanisms pay for the extra process hops in CPU as well as latency.

python -m benchmarks models
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator

import numpy as np

import servegraph as sg
from servegraph.launcher import launch

CASE_SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
CONCURRENCY = 8
WARMUP_CALLS = 50
MECHANISMS = ("naive", "asyncio", "thread_pool", "process_pool", "dedicated_process", "shared")
MLRUN_MOCK = {"process_pool": 830, "dedicated_process": 960}
"""MLRun 1.12's mock server on this machine, events/s (reference numbers, not measured here)."""

BODY = {"x": 1}
EXPECTED = {"m1": {"y": 2}, "m2": {"y": 2}}
ADDRESS_LINE = re.compile(r"serving graph '.*' on (\S+:\d+)")


class Trivial(sg.Model):
    def predict(self, body):
        return {"y": body["x"] + 1}


class AsyncTrivial(sg.Model):
    async def predict_async(self, body):
        return {"y": body["x"] + 1}


class Crunch(sg.Model):
    """A few dense linear-algebra ops on a 160x160 matrix: ~8 ms a call on one core."""

    def load(self) -> None:
        self.matrix = np.random.default_rng(0).standard_normal((160, 160))

    def predict(self, body):
        m = self.matrix
        for _ in range(4):
            m = np.linalg.inv(m @ m.T + np.eye(len(m))) @ self.matrix
        return {"trace": float(np.trace(m))}


def build(mechanism: str) -> sg.Graph:
    """Two endpoints, m1 and m2, both run for every event; "shared" = two proxies to one shared model."""
    graph = sg.Graph(f"bench-{mechanism}")
    runner = sg.ModelRunnerStep(name="runner")
    if mechanism == "shared":
        graph.add_shared_model("trivial", Trivial, "dedicated_process")
        for name in ("m1", "m2"):
            runner.add_shared_model_proxy(name, shared_model_name="trivial")
    else:
        model = AsyncTrivial if mechanism == "asyncio" else Trivial
        for name in ("m1", "m2"):
            runner.add_model(name, model, execution_mechanism=mechanism)
    graph.to(runner).respond()
    return graph


def graph() -> sg.Graph:
    """What the served cases serve: ``BENCH_MECHANISM=thread_pool servegraph serve benchmarks.bench_models:graph``."""
    return build(os.environ.get("BENCH_MECHANISM", "naive"))


def build_crunch(processes: int) -> sg.Graph:
    graph = sg.Graph(f"crunch-{processes}")
    runner = sg.ModelRunnerStep(name="runner")
    runner.add_model("crunch", Crunch, execution_mechanism="process_pool")
    runner.configure_pool_resource(max_processes=processes)
    graph.to(runner).respond()
    return graph


# -- measuring ----------------------------------------------------------------------------------


class Result:
    def __init__(self, calls: int, seconds: float, latencies: list[float]):
        self.rate = calls / seconds
        self.p50_ms = statistics.median(latencies) * 1e3


async def drive(call: Callable[[], Awaitable[object]], seconds: float = CASE_SECONDS) -> Result:
    """`CONCURRENCY` callers, each calling in a loop for `seconds`."""
    for _ in range(WARMUP_CALLS):
        await call()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while (began := time.perf_counter()) < stop_at:
            await call()
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return Result(len(latencies), time.perf_counter() - started, latencies)


async def through_mock(built: sg.Graph, body: dict, expected: object = None) -> Result:
    async with built.to_mock_server() as mock:
        result = await mock.atest(body=dict(body))
        assert expected is None or result == expected, result
        return await drive(lambda: mock.atest(body=dict(body)))


@contextlib.contextmanager
def served(mechanism: str) -> Iterator[str]:
    """``servegraph serve benchmarks.bench_models:graph`` for `mechanism`; yields its address."""
    with launch("benchmarks.bench_models:graph", env={**os.environ, "BENCH_MECHANISM": mechanism}) as router:
        yield router.address


async def through_router(address: str) -> Result:
    from servegraph.clients import AsyncClient

    async with AsyncClient(address) as client:
        assert await client.invoke(dict(BODY)) == EXPECTED
        return await drive(lambda: client.invoke(dict(BODY)))


# -- the report -----------------------------------------------------------------------------------


def mechanisms() -> None:
    import uvloop

    rows = {}
    for mechanism in MECHANISMS:
        mock = uvloop.run(through_mock(build(mechanism), BODY, EXPECTED))
        with served(mechanism) as address:
            router = uvloop.run(through_router(address))
        rows[mechanism] = (mock, router)
    base_mock, base_router = rows["naive"]
    print(f"ModelRunnerStep with 2 trivial models, {CONCURRENCY} in flight, {CASE_SECONDS:.0f} s per case")
    print(
        f"{'mechanism':<18} {'mock calls/s':>12} {'p50 ms':>7} {'vs naive':>9}"
        f" {'router calls/s':>15} {'p50 ms':>7} {'vs naive':>9}   MLRun 1.12 mock"
    )
    for mechanism, (mock, router) in rows.items():
        reference = f"~{MLRUN_MOCK[mechanism]} events/s" if mechanism in MLRUN_MOCK else ""
        print(
            f"{mechanism:<18} {mock.rate:>12,.0f} {mock.p50_ms:>7.2f} {mock.rate / base_mock.rate:>8.2f}x"
            f" {router.rate:>15,.0f} {router.p50_ms:>7.2f} {router.rate / base_router.rate:>8.2f}x   {reference}"
        )
    print("(naive runs in the router: the baseline; 'shared' is two proxies to one dedicated_process model)")


def scaling() -> None:
    import uvloop

    results = {n: uvloop.run(through_mock(build_crunch(n), {"x": 0})) for n in (1, 2)}
    one, two = results[1], results[2]
    print(f"\nprocess_pool scaling: CPU-bound numpy model (~8 ms a call), mock server, {CONCURRENCY} in flight")
    for n, result in results.items():
        print(f"  max_processes={n}: {result.rate:7.1f} calls/s   p50 {result.p50_ms:6.1f} ms")
    print(f"  2 processes / 1 process: {two.rate / one.rate:.2f}x (target >= 1.7x on 2 cores)")


def main() -> None:
    mechanisms()
    scaling()


if __name__ == "__main__":
    from benchmarks.bench_models import main as imported_main  # models must be importable by path for workers

    imported_main()
