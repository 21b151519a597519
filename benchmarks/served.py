"""What the gRPC benchmarks serve: a 3-step graph, and a bare grpc.aio echo server as the floor.

servegraph serve benchmarks.served:three_step
python -m benchmarks.served PORT          # the echo server
"""

from __future__ import annotations

import sys

import servegraph as sg


def parse(body: dict) -> dict:
    return {**body, "parsed": True}


class Score:
    def __init__(self, weight: float = 2.0):
        self.weight = weight

    def do(self, body: dict) -> dict:
        body["score"] = self.weight * len(body.get("text", ""))
        return body


async def finish(body: dict) -> dict:
    body["done"] = True
    return body


three_step = sg.Graph("three-step")
three_step.to(name="parse", handler=parse).to(Score, name="score").to(name="finish", handler=finish).respond()


async def echo_server(port: int) -> None:
    """servegraph.v1.Graph/Invoke answering with the request's own body: gRPC and protobuf alone."""
    import grpc

    from servegraph.v1 import graph_pb2, graph_pb2_grpc

    class Echo(graph_pb2_grpc.GraphServicer):
        async def Invoke(self, request, context):
            return graph_pb2.InvokeResponse(body=request.body, id=request.id)

        async def InvokeStream(self, request, context):
            """``n`` messages, each the chunk the streaming graphs below send: the floor for a stream."""
            fields = request.body.struct_value.fields
            chunk = graph_pb2.InvokeResponse(id=request.id)
            chunk.body.struct_value.fields["text"].string_value = fields["text"].string_value
            for i in range(int(fields["n"].number_value)):
                chunk.body.struct_value.fields["i"].number_value = i
                yield chunk

    server = grpc.aio.server()
    graph_pb2_grpc.add_GraphServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo server on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(echo_server(int(sys.argv[1]) if len(sys.argv) > 1 else 0))


smollm2 = sg.Graph("smollm2")  # the embedded GGUF: llama.cpp
smollm2.to(sg.ModelRunnerStep(name="llm")).respond().add_model("smollm2", sg.LLModel, "dedicated_process")

smollm2_transformers = sg.Graph("smollm2-transformers")
smollm2_transformers.to(sg.ModelRunnerStep(name="llm")).respond().add_model(
    "smollm2", sg.LLModel, "dedicated_process", provider="transformers"
)


class Identity(sg.Model):
    def predict(self, body):
        return body["inputs"][0]


class BatchedIdentity(sg.Model):
    def predict_batch(self, bodies):
        return [body["inputs"][0] for body in bodies]


v2_models = sg.Graph("v2-models")
v2_runner = sg.ModelRunnerStep(name="models")
v2_runner.add_model("in_router", Identity, "naive")
v2_runner.add_model("in_worker", Identity, "dedicated_process")
v2_runner.add_model("in_worker_batched", BatchedIdentity, "dedicated_process", max_batch_size=8)
v2_models.to(v2_runner).respond()


def chunks(body: dict):
    """A streaming step: ``n`` small chunks, as a token stream sends them."""
    for i in range(body["n"]):
        yield {"text": body["text"], "i": i}


class Chunks(sg.Model):
    def predict(self, body):
        yield from chunks(body)


streaming_step = sg.Graph("streaming-step")
streaming_step.to(name="chunks", handler=chunks).respond()

streaming_worker = sg.Graph("streaming-worker")
streaming_worker.to(sg.ModelRunnerStep(name="runner")).respond().add_model("chunks", Chunks, "dedicated_process")


class Echo(sg.Model):
    def predict(self, body):
        return body


echo_worker = sg.Graph("echo-worker")
echo_worker.to(sg.ModelRunnerStep(name="runner")).respond().add_model("echo", Echo, "dedicated_process")


class Burn(sg.Model):
    """CPU-bound pure Python: ``spins`` loop turns (~10 ms for 200 000 on these machines), one core."""

    def predict(self, body):
        total = 0
        for i in range(int(body.get("spins", 200_000))):
            total += i * i % 7
        return {"total": total}


burn = sg.Graph("burn")
burn.to(sg.ModelRunnerStep(name="runner")).respond().add_model("burn", Burn, "dedicated_process")
