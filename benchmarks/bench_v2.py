"""V2 ModelInfer (a 16-float FP32 tensor) on a model in the router and on one in a dedicated worker.

The client sends prebuilt request bytes over a plain grpc.aio channel, so the numbers are the
server's. References (not measured in this run): MLServer 1.7 on this machine does ~1.1-1.3k req/s
with 8 clients for a model in its process, ~0.6-0.9k through its worker pool.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import numpy as np

from servegraph.launcher import launch
from servegraph.v2_protocol import ModelInferRequest

from .bench_router import cpu_seconds, percentile

DURATION = float(os.environ.get("BENCH_SECONDS", "3"))
MLSERVER = {"in_router": 1200, "in_worker": 750}


def request_bytes(model: str) -> bytes:
    request = ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return request.SerializeToString()


async def load(address: str, model: str, concurrency: int) -> tuple[float, list[float]]:
    payload = request_bytes(model)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(100):
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


def main() -> None:
    import uvloop

    print("== V2 ModelInfer, FP32[1,16]: model in the router vs in a dedicated worker ==")
    with launch("benchmarks.served:v2_models") as router:
        for model in ("in_router", "in_worker"):
            for concurrency in (1, 8):
                before = cpu_seconds(router.process.pid)
                rate, latencies = uvloop.run(load(router.address, model, concurrency))
                cost = (cpu_seconds(router.process.pid) - before) / (len(latencies) + 100)
                reference = (
                    f"   vs MLServer ~{MLSERVER[model]} req/s: {rate / MLSERVER[model]:.2f}x"
                    if concurrency == 8
                    else ""
                )
                p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
                print(
                    f"{model:>9} x{concurrency}: {rate:7.0f} req/s   p50 {p50:5.2f} ms   p99 {p99:5.2f} ms"
                    f"   router CPU {cost * 1e6:4.0f} us/req{reference}"
                )


if __name__ == "__main__":
    main()
