"""Property tests of what the servers decode from callers: whatever the bytes, dtype, shape and
contents, the codec and the V2 tensor decoding give a correct value or InvalidArgument, nothing else."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from servegraph import InvalidArgument, codec
from servegraph.serving import v2_protocol
from servegraph.v1 import types_pb2

settings.register_profile("servegraph", max_examples=200, deadline=None)
settings.load_profile("servegraph")

INT64 = st.integers(-(2**63), 2**63 - 1)
DIMS = st.one_of(st.integers(0, 4), st.integers(-2, 2**20), INT64)
SHAPES = st.one_of(st.lists(DIMS, max_size=4), st.lists(st.integers(0, 1), min_size=60, max_size=70))
DTYPE_NAMES = st.one_of(
    st.sampled_from([*codec.DTYPES, codec.BYTES_DTYPE, "object", "datetime64", "U3", "f4,i4", "(2,)f4", "V8"]),
    st.just("{'names':['a'],'formats':['f4']}"),
    st.text(max_size=12),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
MARKERS = st.fixed_dictionaries({codec.TENSOR_KEY: st.one_of(st.integers(-3, 5), st.floats(), st.text(max_size=3))})
BODIES = st.recursive(
    JSON | MARKERS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def tensors():
    return st.builds(
        lambda dtype, shape, data: types_pb2.Tensor(dtype=dtype, shape=shape, data=data),
        DTYPE_NAMES,
        SHAPES,
        st.binary(max_size=64),
    )


def decoded_or_refused(decode, *args):
    try:
        return decode(*args)
    except InvalidArgument:
        return InvalidArgument


# -- the codec ---------------------------------------------------------------------------------------
@given(tensors())
def test_decode_tensor_gives_the_sent_array_or_invalid_argument(tensor):
    value = decoded_or_refused(codec.decode_tensor, tensor)
    if value is InvalidArgument:
        return
    if tensor.dtype == codec.BYTES_DTYPE:
        assert value == tensor.data
        return
    assert value.dtype.name == tensor.dtype and value.shape == tuple(tensor.shape)
    assert value.tobytes() == tensor.data


@given(hnp.arrays(hnp.scalar_dtypes().filter(lambda d: d.kind in "biufc"), hnp.array_shapes(min_dims=0, max_side=4)))
def test_encoded_arrays_decode_to_equal_arrays(array):
    decoded = codec.decode_tensor(codec.encode_tensor(array))
    assert decoded.shape == array.shape and np.array_equal(decoded, array, equal_nan=array.dtype.kind in "fc")


@given(BODIES, st.lists(tensors(), max_size=3))
def test_from_value_gives_the_body_or_invalid_argument(body, sent):
    value = struct_pb2.Value()
    try:
        json_format.ParseDict(body, value)
    except (json_format.ParseError, ValueError, TypeError, OverflowError):
        return  # no Value to send (e.g. an int beyond a double's range)
    decoded_or_refused(codec.from_value, value, sent)


@given(st.binary(max_size=200), st.lists(tensors(), max_size=3))
def test_from_value_of_any_message_bytes(data, sent):
    try:
        value = struct_pb2.Value.FromString(data)
    except Exception:
        return  # grpc's side: the servers' lenient deserializers answer those (tests/test_bad_input.py)
    decoded_or_refused(codec.from_value, value, sent)


@given(
    st.one_of(st.binary(max_size=200), BODIES.map(lambda body: json.dumps(body).encode())),
    st.lists(tensors(), max_size=3),
)
def test_from_payload_of_any_bytes(data, sent):
    payload = types_pb2.Payload(json=data, tensors=sent)
    decoded_or_refused(codec.from_payload, payload)


# -- V2 tensors --------------------------------------------------------------------------------------
V2_DATATYPES = st.one_of(st.sampled_from([*v2_protocol.DTYPES, "BYTES"]), st.text(max_size=6))


@given(
    st.lists(st.tuples(st.text(max_size=4), V2_DATATYPES, SHAPES, st.lists(INT64, max_size=6)), max_size=3),
    st.one_of(st.none(), st.lists(st.binary(max_size=48), max_size=3)),
)
def test_decode_inputs_gives_tensors_or_invalid_argument(inputs, raw):
    request = v2_protocol.ModelInferRequest(model_name="m")
    for name, datatype, shape, values in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        field = v2_protocol.CONTENTS.get(datatype)
        if field == "int_contents":
            tensor.contents.int_contents.extend(v % 2**32 - 2**31 for v in values)
        elif field in ("uint_contents", "uint64_contents"):
            getattr(tensor.contents, field).extend(v % 2**32 for v in values)
        elif field == "int64_contents":
            tensor.contents.int64_contents.extend(values)
        elif field in ("fp32_contents", "fp64_contents"):
            getattr(tensor.contents, field).extend(float(v) for v in values)
        elif field == "bool_contents":
            tensor.contents.bool_contents.extend(bool(v % 2) for v in values)
        elif field == "bytes_contents":
            tensor.contents.bytes_contents.extend(str(v).encode() for v in values)
    request.raw_input_contents.extend(raw or [])
    decoded = decoded_or_refused(v2_protocol.decode_inputs, request)
    if decoded is InvalidArgument:
        return
    for tensor, sent in zip(decoded, request.inputs, strict=True):
        assert tensor.shape == list(sent.shape)
        if tensor.datatype != "BYTES":
            assert tensor.value.shape == tuple(sent.shape) and tensor.value.dtype == v2_protocol.DTYPES[sent.datatype]
            if not raw:
                contents = getattr(sent.contents, v2_protocol.CONTENTS[sent.datatype])
                assert tensor.value.ravel().tolist() == list(contents), "typed contents arrive unchanged"


@given(st.binary(max_size=300))
def test_decode_inputs_of_any_message_bytes(data):
    try:
        request = v2_protocol.ModelInferRequest.FromString(data)
    except Exception:
        return  # grpc's side: answered by the lenient deserializers
    decoded_or_refused(v2_protocol.decode_inputs, request)


@given(
    st.fixed_dictionaries(
        {"name": st.one_of(st.text(max_size=4), JSON), "datatype": V2_DATATYPES | JSON, "shape": SHAPES | JSON},
        optional={"data": st.one_of(JSON, st.lists(st.one_of(st.integers(-300, 300), st.floats()), max_size=8))},
    )
)
def test_from_json_gives_a_tensor_or_invalid_argument(item):
    tensor = decoded_or_refused(v2_protocol.from_json, item)
    if tensor is InvalidArgument or tensor.datatype == "BYTES":
        return
    assert tensor.value.shape == tuple(item["shape"]) and tensor.value.dtype == v2_protocol.DTYPES[item["datatype"]]
    flat = item["data"] if isinstance(item["data"], list) else [item["data"]]
    assert tensor.value.size == math.prod(item["shape"])
    if tensor.value.dtype.kind in "iub" and flat and not any(isinstance(v, list) for v in flat):
        assert tensor.value.ravel().tolist() == flat, "integers arrive exactly"


@pytest.mark.parametrize("shape", [[2, 0], [0, 3], [1, 0, 2]])
def test_empty_bytes_tensors_nest_like_numpy(shape):
    tensor = v2_protocol.from_json({"name": "t", "datatype": "BYTES", "shape": shape, "data": []})
    assert tensor.value == np.empty(shape, dtype=object).tolist()
