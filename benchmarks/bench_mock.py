"""The engine's own overhead: a 3-step flow through the mock server against calling the steps directly.

Cases: sequential ``mock.test()`` (the engine on its loop thread), ``await mock.atest()`` on the caller's
loop with 1 and with 64 requests in flight, and a plain loop calling the three functions (the baseline).
Each case runs for a fixed time budget and reports events/s and per-event latency.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import servegraph as sg

CASE_SECONDS = 2.0
WARMUP_EVENTS = 200
BODY = {"text": "hello world", "n": 1}


def preprocess(body):
    return {**body, "n": body["n"] + 1}


class Enrich:
    def __init__(self, k=3):
        self.k = k

    def do(self, body):
        return {**body, "k": self.k}


async def postprocess(body):
    return {**body, "done": True}


def build_graph() -> sg.Graph:
    graph = sg.Graph("bench")
    graph.to(name="pre", handler=preprocess).to(Enrich, name="enrich", k=3).to(
        name="post", handler=postprocess
    ).respond()
    return graph


EXPECTED = {"text": "hello world", "n": 2, "k": 3, "done": True}


class Result:
    def __init__(self, name: str, events: int, seconds: float, latencies: list[float]):
        self.name = name
        self.rate = events / seconds
        cuts = statistics.quantiles(latencies, n=100)
        self.p50_us = cuts[49] * 1e6
        self.p99_us = cuts[98] * 1e6


def run_sync(name: str, call: Callable[[], object]) -> Result:
    for _ in range(WARMUP_EVENTS):
        call()
    latencies = []
    started = time.perf_counter()
    deadline = started + CASE_SECONDS
    while (now := time.perf_counter()) < deadline:
        call()
        latencies.append(time.perf_counter() - now)
    return Result(name, len(latencies), time.perf_counter() - started, latencies)


async def run_async(name: str, call: Callable[[], Awaitable[object]], concurrency: int) -> Result:
    async def timed(latencies: list[float]) -> None:
        began = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - began)

    for _ in range(WARMUP_EVENTS):
        await call()
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + CASE_SECONDS
    if concurrency == 1:  # a plain await loop: no task per event
        while (now := time.perf_counter()) < deadline:
            await call()
            latencies.append(time.perf_counter() - now)
    else:
        while time.perf_counter() < deadline:
            await asyncio.gather(*(timed(latencies) for _ in range(concurrency)))
    return Result(name, len(latencies), time.perf_counter() - started, latencies)


def baseline_call() -> Callable[[], Awaitable[object]]:
    enrich = Enrich(k=3)

    async def call() -> object:
        return await postprocess(enrich.do(preprocess(dict(BODY))))

    return call


MLRUN_MOCK_EVENTS = 4_700
"""MLRun 1.12's mock server on such a graph on this machine (a reference number)."""


async def async_cases() -> list[Result]:
    results = [await run_async("baseline: the 3 steps called in a loop", baseline_call(), 1)]
    async with build_graph().to_mock_server() as mock:
        assert await mock.atest(body=dict(BODY)) == EXPECTED
        for concurrency in (1, 64):
            results.append(
                await run_async(
                    f"async with + await atest(), {concurrency} in flight",
                    lambda: mock.atest(body=dict(BODY)),
                    concurrency,
                )
            )
    return results


def main() -> None:
    baseline, *async_results = asyncio.run(async_cases())
    with build_graph().to_mock_server() as mock:
        assert mock.test(body=dict(BODY)) == EXPECTED
        sync_result = run_sync("with + mock.test(), sequential", lambda: mock.test(body=dict(BODY)))
    print(f"3-step flow (sync fn, class do, async fn), {CASE_SECONDS:.0f} s per case")
    print(f"{'case':<42} {'events/s':>10} {'p50 us':>9} {'p99 us':>9} {'vs baseline':>12}")
    for result in (baseline, sync_result, *async_results):
        slowdown = baseline.rate / result.rate
        print(f"{result.name:<42} {result.rate:>10,.0f} {result.p50_us:>9.1f} {result.p99_us:>9.1f} {slowdown:>11.1f}x")
    print("(vs baseline: how many times slower than calling the three steps directly)")
    print(
        f"mock.test() vs MLRun 1.12's mock server (~{MLRUN_MOCK_EVENTS:,} events/s here, not measured in this run): "
        f"{sync_result.rate / MLRUN_MOCK_EVENTS:.1f}x"
    )


if __name__ == "__main__":
    main()
