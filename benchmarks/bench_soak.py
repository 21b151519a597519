"""Soak: many calls through step → dedicated worker → step, with zero errors and flat memory.

`ROUNDS` rounds of `CALLS` calls at `CONCURRENCY` in flight through a served router (bounded in time).
Prints the resident memory and open file descriptors of the router and its worker after a warm-up
and after each round: what leaks per call (a call's bookkeeping, a timer, a socket) shows as growth
from round to round.

python -m benchmarks soak
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import servegraph as sg
from servegraph.serving.launcher import launch

CALLS = 5_000
ROUNDS = 2
CONCURRENCY = 32
ROUND_LIMIT = 25.0
"""Seconds a round may take before the soak fails (a few thousand calls a second are expected)."""


def pre(body: dict) -> dict:
    return {**body, "pre": True}


class Add(sg.Model):
    def predict(self, body):
        return {**body, "y": body["x"] + 1}


def post(body: dict) -> dict:
    return {**body, "post": True}


graph = sg.Graph("soak")
runner = sg.ModelRunnerStep(name="model")
runner.add_model("add", Add, execution_mechanism="dedicated_process", timeout=10.0)
graph.to(name="pre", handler=pre).to(runner).to(name="post", handler=post).respond()


def usage(pid: int) -> tuple[float, int]:
    """Resident memory (MB) and open file descriptors of `pid` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def children(pid: int) -> list[int]:
    return [int(task) for task in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def soak_round(client, calls: int) -> tuple[int, float]:
    """`calls` calls, `CONCURRENCY` at a time; the number that failed and the seconds it took."""
    failures = 0
    numbers = iter(range(calls))

    async def caller() -> None:
        nonlocal failures
        for x in numbers:
            try:
                result = await client.invoke({"x": x})
                failures += result != {"x": x, "pre": True, "y": x + 1, "post": True}
            except sg.ServingError:
                failures += 1

    started = time.perf_counter()
    async with asyncio.timeout(ROUND_LIMIT):
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return failures, time.perf_counter() - started


async def soak(address: str, pids: dict[str, int]) -> None:
    from servegraph.clients import AsyncClient

    def report(when: str) -> None:
        columns = []
        for name, pid in pids.items():
            rss, fds = usage(pid)
            columns.append(f"{name} {rss:6.1f} MB {fds:3d} fds")
        print(f"  {when:<16} {'   '.join(columns)}", flush=True)

    async with AsyncClient(address) as client:
        await soak_round(client, 500)  # warm-up: imports, caches, gRPC buffers
        report("after warm-up")
        for n in range(1, ROUNDS + 1):
            failures, seconds = await soak_round(client, CALLS)
            report(f"after round {n}")
            print(f"    {CALLS:,} calls in {seconds:.1f} s ({CALLS / seconds:,.0f}/s), {failures} failed", flush=True)
            assert failures == 0, f"{failures} of {CALLS} calls failed"


def main() -> None:
    import uvloop

    print(f"{ROUNDS} x {CALLS:,} calls, {CONCURRENCY} in flight: step -> dedicated_process model -> step")
    with launch("benchmarks.bench_soak:graph") as router:
        pids = {"router": router.process.pid, "worker": children(router.process.pid)[0]}
        uvloop.run(soak(router.address, pids))


if __name__ == "__main__":
    from benchmarks.bench_soak import main as imported_main  # the model must be importable by path for the worker

    imported_main()
