"""Model execution mechanisms: a ModelRunnerStep with two trivial models, on each mechanism.

Each mechanism runs through the mock server (``async with`` + ``await atest()``, 8 in flight) and
through a served gRPC router (``servegraph serve``, 8 concurrent AsyncClient callers), against the
in-router ``naive`` mechanism as the baseline of the same run. Then process_pool scaling: a CPU-bound
numpy model (~8 ms a call with one BLAS thread, the workers' default) on 1 and on 2 pool processes.

Every case runs for ``BENCH_SECONDS`` (2 s by default), once in each of ``BENCH_ROUNDS`` rounds (3 by
default), with every router up throughout; the table shows each case's median round. On a 2-core machine
the callers, the router and the workers share the CPU, so worker mechanisms pay for the extra process hops
in CPU as well as latency.

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
from servegraph.serving.launcher import launch

from .bench_router import percentile

CASE_SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
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


def median(results: list[Result]) -> Result:
    """The run with the median rate (its p50 with it): one slow moment of a shared VM does not decide."""
    return percentile(results, 0.5, key=lambda result: result.rate)


def mechanisms() -> None:
    import uvloop

    runs: dict[tuple[str, str], list[Result]] = {(m, where): [] for m in MECHANISMS for where in ("mock", "router")}
    with contextlib.ExitStack() as routers:
        addresses = {mechanism: routers.enter_context(served(mechanism)) for mechanism in MECHANISMS}
        for turn in range(ROUNDS):  # every case once a round, the order rotating, so drift hits them alike
            order = MECHANISMS[turn % len(MECHANISMS) :] + MECHANISMS[: turn % len(MECHANISMS)]
            for mechanism in order:
                runs[mechanism, "mock"].append(uvloop.run(through_mock(build(mechanism), BODY, EXPECTED)))
                runs[mechanism, "router"].append(uvloop.run(through_router(addresses[mechanism])))
    rows = {mechanism: (median(runs[mechanism, "mock"]), median(runs[mechanism, "router"])) for mechanism in MECHANISMS}
    base_mock, base_router = rows["naive"]
    print(
        f"ModelRunnerStep with 2 trivial models, {CONCURRENCY} in flight, {CASE_SECONDS:.0f} s per case,"
        f" median of {ROUNDS} rounds"
    )
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
    for mechanism in MLRUN_MOCK:
        spread = [f"{result.rate:,.0f}" for result in runs[mechanism, "router"]]
        print(f"  {mechanism} through the router, every round: {', '.join(spread)} calls/s")


async def scaling_rounds() -> dict[int, list[Result]]:
    """1 and 2 pool processes, both up at once, driven in turns (the order alternating) for `ROUNDS` rounds."""
    results: dict[int, list[Result]] = {1: [], 2: []}
    async with build_crunch(1).to_mock_server() as one, build_crunch(2).to_mock_server() as two:
        for turn in range(ROUNDS):
            for n, mock in ((1, one), (2, two)) if turn % 2 == 0 else ((2, two), (1, one)):
                results[n].append(await drive(lambda mock=mock: mock.atest(body={"x": 0})))
    return results


def scaling() -> None:
    import uvloop

    results = uvloop.run(scaling_rounds())
    one, two = median(results[1]), median(results[2])
    print(
        f"\nprocess_pool scaling: CPU-bound numpy model (~8 ms a call), mock server, {CONCURRENCY} in flight,"
        f" median of {ROUNDS} rounds"
    )
    for n, result in ((1, one), (2, two)):
        print(f"  max_processes={n}: {result.rate:7.1f} calls/s   p50 {result.p50_ms:6.1f} ms")
    turns = ", ".join(f"{b.rate / a.rate:.2f}x" for a, b in zip(results[1], results[2], strict=True))
    print(f"  2 processes / 1 process: {two.rate / one.rate:.2f}x (target >= 1.7x on 2 cores); each round: {turns}")


def main() -> None:
    mechanisms()
    scaling()


if __name__ == "__main__":
    from benchmarks.bench_models import main as imported_main  # models must be importable by path for workers

    imported_main()
