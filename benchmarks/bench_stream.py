"""One InvokeStream through the router vs a bare grpc.aio server streaming the same messages.

The bare server (`served.py`) sends ``n`` prebuilt messages: gRPC and protobuf alone. The router
streams the same chunks from a generator step in the router, and from a streaming model in a worker
(one more hop). Messages/s of one stream, the client reading as fast as it can, and the serving
process's CPU time per message (steadier than a rate on a shared 2-core VM); ``BENCH_ROUNDS`` rounds,
each server in turn, the medians reported with the ratio of each round.
"""

from __future__ import annotations

import time

import grpc

from servegraph import codec
from servegraph.serving.launcher import launch
from servegraph.v1 import graph_pb2, graph_pb2_grpc

from .bench_router import ROUNDS, cpu_seconds, echo_server, percentile

MESSAGES = 5000


async def messages_per_second(address: str) -> float:
    request = graph_pb2.InvokeRequest()
    codec.to_value({"n": MESSAGES, "text": "token"}, request.body, request.tensors)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = graph_pb2_grpc.GraphStub(channel)
        async for _ in stub.InvokeStream(request):  # warm up
            pass
        started = time.perf_counter()
        count = 0
        async for _ in stub.InvokeStream(request):
            count += 1
        assert count == MESSAGES, count
        return count / (time.perf_counter() - started)


def main() -> None:
    import uvloop

    print(f"== InvokeStream of {MESSAGES} chunks: router vs bare grpc.aio, median of {ROUNDS} rounds ==")
    with (
        echo_server() as echo,
        launch("benchmarks.served:streaming_step") as step,
        launch("benchmarks.served:streaming_worker") as worker,
    ):
        servers = {
            "bare": echo,
            "router step": (step.address, step.process.pid),
            "router + worker": (worker.address, worker.process.pid),
        }
        rates: dict[str, list[float]] = {name: [] for name in servers}
        costs: dict[str, list[float]] = {name: [] for name in servers}
        for turn in range(ROUNDS):
            order = list(servers) if turn % 2 == 0 else list(reversed(servers))
            for name in order:
                address, pid = servers[name]
                before = cpu_seconds(pid)
                rates[name].append(uvloop.run(messages_per_second(address)))
                costs[name].append((cpu_seconds(pid) - before) / (2 * MESSAGES))
        for name in servers:
            line = (
                f"{name:>16}: {percentile(rates[name], 0.5):8.0f} messages/s"
                f"   router CPU {percentile(costs[name], 0.5) * 1e6:5.1f} us/message"
            )
            if name != "bare":
                ratios = sorted(mine / bare for mine, bare in zip(rates[name], rates["bare"], strict=True))
                cost_ratio = percentile(sorted(b / m for m, b in zip(costs[name], costs["bare"], strict=True)), 0.5)
                rounds = ", ".join(f"{ratio:.2f}" for ratio in ratios)
                line += (
                    f"\n{'':>18}{percentile(ratios, 0.5):.2f}x bare's messages/s (target >= 0.8x; rounds {rounds}),"
                    f" {cost_ratio:.2f}x its CPU efficiency"
                )
            print(line)


if __name__ == "__main__":
    main()
