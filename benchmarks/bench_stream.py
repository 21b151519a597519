"""One InvokeStream through the router vs a bare grpc.aio server streaming the same messages.

The bare server (`served.py`) sends ``n`` prebuilt messages: gRPC and protobuf alone. The router
streams the same chunks from a generator step in the router, and from a streaming model in a worker
(one more hop). Messages/s of one stream, the client reading as fast as it can; ``BENCH_ROUNDS``
rounds, each server in turn, the median reported with the ratio of each round.
"""

from __future__ import annotations

import time

import grpc

from servegraph import codec
from servegraph.serving.launcher import launch
from servegraph.v1 import graph_pb2, graph_pb2_grpc

from .bench_router import ROUNDS, echo_server, percentile

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
        echo_server() as (echo, _),
        launch("benchmarks.served:streaming_step") as step,
        launch("benchmarks.served:streaming_worker") as worker,
    ):
        servers = {"bare": echo, "router step": step.address, "router + worker": worker.address}
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for turn in range(ROUNDS):
            order = list(servers) if turn % 2 == 0 else list(reversed(servers))
            for name in order:
                rates[name].append(uvloop.run(messages_per_second(servers[name])))
        for name, measured in rates.items():
            line = f"{name:>16}: {percentile(measured, 0.5):8.0f} messages/s"
            if name != "bare":
                ratios = [mine / bare for mine, bare in zip(measured, rates["bare"], strict=True)]
                rounds = ", ".join(f"{ratio:.2f}" for ratio in ratios)
                line += f"   {percentile(sorted(ratios), 0.5):.2f}x bare (target >= 0.8x); rounds {rounds}"
            print(line)


if __name__ == "__main__":
    main()
