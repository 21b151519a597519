"""Bad input of every kind ends as INVALID_ARGUMENT naming the cause, before any model runs, and the
server goes on serving: tensors numpy refuses, V2 JSON and typed contents out of range, request ids
that cannot be echoed as metadata, bytes that are no request message, garbage in a V2 stream."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time

import grpc
import numpy as np
import pytest
from servers import serve

from servegraph.aio import answer_concurrently
from servegraph.clients import Client
from servegraph.v1 import graph_pb2, graph_pb2_grpc, types_pb2

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

INVOKE = "/servegraph.v1.Graph/Invoke"
INVOKE_STREAM = "/servegraph.v1.Graph/InvokeStream"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
STRUCTURED = "{'names':['a'],'formats':['f4']}"


@pytest.fixture(scope="module")
def served():
    with serve("served_v2:graph") as router:
        yield router


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served.address) as channel:
        yield channel


def doubler_calls(address: str) -> int:
    with Client(address) as client:
        return next((row["requests"] for row in client.stats() if row["name"] == "doubler"), 0)


@contextlib.contextmanager
def refused(address: str, cause: str):
    """The block's call ends INVALID_ARGUMENT naming `cause`, no model ran, and the next call succeeds."""
    before = doubler_calls(address)
    with pytest.raises(grpc.RpcError) as failure:
        yield
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    assert re.search(cause, failure.value.details()), failure.value.details()
    assert doubler_calls(address) == before, "the model ran"
    with Client(address) as client:
        assert client.invoke({"inputs": [np.arange(3, dtype=np.float32)]}).tolist() == [0, 2, 4]


def invoke_request(tensor: types_pb2.Tensor, **fields) -> graph_pb2.InvokeRequest:
    request = graph_pb2.InvokeRequest(**fields)
    request.body.struct_value.fields["inputs"].list_value.values.add().struct_value.fields["$tensor"].number_value = 0
    request.tensors.append(tensor)
    return request


def v2_request(datatype="FP32", shape=(2,), raw: bytes | None = b"\0" * 8, **fields):
    request = service_pb2.ModelInferRequest(model_name="doubler", **fields)
    request.inputs.add(name="x", datatype=datatype, shape=list(shape))
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


# -- 5: tensors numpy refuses ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tensor", "cause"),
    [
        (types_pb2.Tensor(dtype=STRUCTURED, shape=[1], data=b"\0" * 4), "is not a numeric numpy dtype name"),
        (types_pb2.Tensor(dtype="datetime64", shape=[1], data=b"\0" * 8), "is not a numeric numpy dtype name"),
        (types_pb2.Tensor(dtype="float32", shape=[0, 2**62]), r"shape \[0, 4611686018427387904\] is too large"),
        (types_pb2.Tensor(dtype="float32", shape=[1] * 65, data=b"\0" * 4), "65 dimensions; at most 64"),
    ],
)
def test_invoke_tensors_numpy_refuses(served, channel, tensor, cause):
    with refused(served.address, f"tensor 0: .*{cause}"):
        graph_pb2_grpc.GraphStub(channel).Invoke(invoke_request(tensor))


@pytest.mark.parametrize(
    ("request_", "cause"),
    [
        (v2_request(shape=[0, 2**62], raw=b""), r"input 'x': shape \[0, 4611686018427387904\] is too large"),
        (v2_request(shape=[1] * 65, raw=b"\0" * 4), "input 'x': shape has 65 dimensions"),
        (v2_request(datatype="BYTES", shape=[2**40, 0], raw=b""), "too many rows"),
    ],
)
def test_v2_raw_tensors_numpy_refuses(served, channel, request_, cause):
    with refused(served.address, cause):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_)


# -- 6: V2 JSON tensors and typed contents -----------------------------------------------------------
@pytest.mark.parametrize(
    ("tensor", "cause"),
    [
        ({"datatype": "FP32", "shape": [1], "data": ["abc"]}, "abc is not a number"),
        ({"datatype": "FP32", "shape": "abc", "data": [1]}, "shape must be a list"),
        ({"datatype": "FP32", "shape": [2, 0.5], "data": [1]}, r"shape \[2, 0.5\] must hold non-negative integers"),
        ({"datatype": "INT8", "shape": [1], "data": [300]}, r"300 is not an integer in -128\.\.127 \(INT8\)"),
        ({"datatype": "INT32", "shape": [1], "data": [1.5]}, "1.5 is not an integer"),
        ({"datatype": ["FP32"], "shape": [1], "data": [1]}, "unknown datatype"),
    ],
)
def test_v2_json_tensors_through_invoke(served, channel, tensor, cause):
    request = graph_pb2.InvokeRequest(path="/v2/models/doubler/infer")
    request.body.struct_value.update({"inputs": [{"name": "x", **tensor}]})
    with refused(served.address, f"input 'x': {cause}"):
        graph_pb2_grpc.GraphStub(channel).Invoke(request)


@pytest.mark.parametrize(
    ("datatype", "field", "value", "cause"),
    [
        ("INT8", "int_contents", 300, r"300 is out of range for INT8 \(-128\.\.127\)"),
        ("INT16", "int_contents", -40000, "-40000 is out of range for INT16"),
        ("UINT8", "uint_contents", 256, "256 is out of range for UINT8"),
        ("UINT16", "uint_contents", 70000, "70000 is out of range for UINT16"),
    ],
)
def test_v2_typed_contents_out_of_range(served, channel, datatype, field, value, cause):
    request = v2_request(datatype=datatype, shape=[1], raw=None)
    getattr(request.inputs[0].contents, field).append(value)
    with refused(served.address, f"input 'x': {cause}"):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)


def test_v2_typed_contents_in_range_still_arrive(channel):
    request = v2_request(datatype="INT8", shape=[2], raw=None)
    request.inputs[0].contents.int_contents.extend([-128, 127])
    response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert list(response.outputs[0].contents.int_contents) == [0, -2], "int8 doubled wraps in the model, not before"


# -- 7: request ids that cannot be echoed ------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_id", "cause"),
    [("a\nb", "must be printable ASCII"), ("né", "must be printable ASCII"), ("x" * 100_000, "100000 characters")],
)
def test_request_ids_that_cannot_be_echoed(served, channel, request_id, cause):
    tensor = types_pb2.Tensor(dtype="float32", shape=[1], data=b"\0" * 4)
    with refused(served.address, f"request id .*{cause}"):
        graph_pb2_grpc.GraphStub(channel).Invoke(invoke_request(tensor, id=request_id))
    with refused(served.address, f"request id .*{cause}"):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(v2_request(id=request_id))


def test_request_id_header_too_long(served, channel):
    tensor = types_pb2.Tensor(dtype="float32", shape=[1], data=b"\0" * 4)
    with refused(served.address, "request id is 300 characters long"):
        graph_pb2_grpc.GraphStub(channel).Invoke(invoke_request(tensor), metadata=(("x-request-id", "r" * 300),))


# -- 8: bytes that are no request message ------------------------------------------------------------
def _nested_lists(depth: int) -> bytes:
    """An InvokeRequest whose body is a list in a list ... `depth` deep (sizes inside out, then bytes)."""
    levels, inner = [], 0  # Value{list_value (6): ListValue{values (1): <inner Value>}}
    for _ in range(depth):
        list_value = 1 + len(_varint(inner)) + inner
        levels.append((inner, list_value))
        inner = 1 + len(_varint(list_value)) + list_value
    parts = [b"\x0a" + _varint(inner)]  # InvokeRequest.body (1)
    parts += [b"\x32" + _varint(list_value) + b"\x0a" + _varint(value) for value, list_value in reversed(levels)]
    return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_nested_lists_helper_builds_a_valid_message():
    request = graph_pb2.InvokeRequest.FromString(_nested_lists(5))
    assert request.body.list_value.values[0].list_value.values[0].list_value.values[0].WhichOneof("kind")


GARBAGE = {
    "corrupt protobuf": b"\xff\xff\xff",
    "invalid UTF-8 in a string field": b"\x12\x02\xff\xfe",  # InvokeRequest.path / ModelInferRequest.model_version
    "nested 100,000 deep": _nested_lists(100_000),
}


@pytest.mark.parametrize(
    ("method", "kind"), [(INVOKE, kind) for kind in GARBAGE] + [(MODEL_INFER, kind) for kind in list(GARBAGE)[:2]]
)  # ModelInferRequest has no recursive field
def test_unary_calls_with_bytes_that_are_no_request(served, channel, method, kind):
    with refused(served.address, "the request is not a valid .*Request message"):
        channel.unary_unary(method)(GARBAGE[kind], timeout=10)


@pytest.mark.parametrize("kind", GARBAGE)
def test_invoke_stream_with_bytes_that_are_no_request(served, channel, kind):
    with refused(served.address, "not a valid servegraph.v1.InvokeRequest message"):
        list(channel.unary_stream(INVOKE_STREAM)(GARBAGE[kind], timeout=10))


# -- 9: garbage in a V2 stream -----------------------------------------------------------------------
def test_garbage_in_a_v2_stream_ends_it_at_once(served, channel):
    done = threading.Event()

    def requests():
        yield b"\xff\xff\xff"
        done.wait(10)  # the client keeps its side open: the server must end the stream on its own

    started = time.monotonic()
    try:
        with refused(served.address, "not a valid inference.ModelInferRequest message"):
            list(channel.stream_stream(MODEL_STREAM_INFER)(requests(), timeout=8))
    finally:
        done.set()
    assert time.monotonic() - started < 5


def test_answer_concurrently_raises_what_the_requests_raise():
    async def requests():
        yield 1
        await asyncio.sleep(0.05)
        raise ValueError("bad request message")

    async def answer(request):
        yield request * 10

    async def main():
        return [batch async for batch in answer_concurrently(requests(), answer)]

    with pytest.raises(ValueError, match="bad request message"):
        asyncio.run(asyncio.wait_for(main(), 5))
