"""The KServe V2 / Triton protocol's messages and tensors, kept out of the default descriptor pool.

tritonclient (and MLServer) register the ``inference.*`` messages in protobuf's default pool; a
second registration in the same process fails. So the contract (proto/inference/grpc_service.proto)
ships as a descriptor set that loads into a private pool, and message classes come from there.
The wire sees only field numbers, so clients cannot tell.

Tensors are converted here both ways: request inputs (raw bytes, read zero-copy, or typed
contents) to numpy arrays (BYTES to lists of bytes), and results back to named outputs.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..codec import check_shape
from ..errors import InvalidArgument

SERVICE = "inference.GRPCInferenceService"

POOL = descriptor_pool.DescriptorPool()
FILE = POOL.Add(
    descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("servegraph.v1").joinpath("inference.binpb").read_bytes()
    ).file[0]
)


def message(name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
ModelStreamInferResponse = message("ModelStreamInferResponse")

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPES = {dtype: name for name, dtype in DTYPES.items()}
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass
class Tensor:
    """A named tensor of either direction: numpy for numbers, nested lists of bytes/str for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    value: Any


# -- reading inputs ------------------------------------------------------------------------------------
def decode_inputs(request: Any) -> list[Tensor]:
    """The request's inputs; raw contents (when sent) pair with inputs in order."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            value = from_raw(tensor.name, tensor.datatype, tensor.shape, raw[i])
        else:
            value = from_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
        tensors.append(Tensor(tensor.name, tensor.datatype, list(tensor.shape), value))
    return tensors


def _dtype(name: str, datatype: str) -> np.dtype | None:
    """The numpy dtype of a V2 datatype (None for BYTES); InvalidArgument for any other name."""
    if datatype == "BYTES":
        return None
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        known = ", ".join([*DTYPES, "BYTES"])
        raise InvalidArgument(f"input '{name}': unknown datatype {str(datatype)[:64]!r} (known: {known})")
    return dtype


_MAX_EMPTY_ROWS = 1 << 16


def _shape(name: str, dtype: np.dtype | None, shape: Any) -> list[int]:
    """A valid shape for the tensor (see codec.check_shape). An empty BYTES tensor still becomes
    nested lists, one per row before its first 0: those are bounded, so a shape alone cannot fill
    memory (a non-empty one has fewer rows than the elements its data holds)."""
    dims = list(check_shape(f"input '{name}'", shape, dtype.itemsize if dtype is not None else 1))
    if dtype is None and 0 in dims and math.prod(dims[: dims.index(0)]) > _MAX_EMPTY_ROWS:
        raise InvalidArgument(f"input '{name}': empty BYTES tensor of shape {dims} has too many rows")
    return dims


def from_raw(name: str, datatype: str, shape: Any, data: bytes) -> Any:
    dtype = _dtype(name, datatype)
    shape = _shape(name, dtype, shape)
    count = math.prod(shape)
    if dtype is None:
        return _nest(_unpack_bytes(name, data, count), shape)
    if len(data) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input '{name}': {len(data)} bytes do not match datatype {datatype} and shape {shape} "
            f"({count * dtype.itemsize} bytes expected)"
        )
    return np.frombuffer(data, dtype.newbyteorder("<")).reshape(shape)


def from_contents(name: str, datatype: str, shape: Any, contents: Any) -> Any:
    if datatype == "FP16":
        raise InvalidArgument(f"input '{name}': FP16 tensors must be sent as raw_input_contents")
    dtype = _dtype(name, datatype)
    shape = _shape(name, dtype, shape)
    count = math.prod(shape)
    values = getattr(contents, CONTENTS[datatype])
    if len(values) != count:
        raise InvalidArgument(f"input '{name}': {len(values)} values do not match shape {shape} ({count} expected)")
    if dtype is None:
        return _nest(list(values), shape)
    array = np.asarray(values)
    if dtype.kind in "iu" and count:  # the contents' fields are 32 or 64 bits wide: INT8 300 would wrap
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidArgument(f"input '{name}': {bad} is out of range for {datatype} ({info.min}..{info.max})")
    return array.astype(dtype).reshape(shape)


def _unpack_bytes(name: str, data: bytes, count: int) -> list[bytes]:
    """Triton's raw BYTES layout: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidArgument(f"input '{name}': truncated BYTES element length")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise InvalidArgument(f"input '{name}': BYTES element runs past the end of the data")
        items.append(data[offset : offset + size])
        offset += size
    if len(items) != count:
        raise InvalidArgument(f"input '{name}': {len(items)} BYTES elements do not match the shape ({count} expected)")
    return items


def _nest(values: list[Any], shape: list[int]) -> Any:
    """A flat list shaped into nested lists (BYTES tensors stay Python lists); 0s in shape give empty rows."""
    for depth in range(len(shape) - 1, 0, -1):
        dim, rows = shape[depth], math.prod(shape[:depth])
        values = [values[i * dim : (i + 1) * dim] for i in range(rows)]
    return values


# -- writing outputs -----------------------------------------------------------------------------------
def to_tensors(result: Any, names: list[str]) -> list[Tensor]:
    """A model's result as named outputs: a dict names them, anything else is one output.

    `names` are the declared output names (the first names a lone output, "output0" by default).
    """
    if isinstance(result, dict) and (not names or set(result) <= set(names)):
        return [tensor(str(key), value) for key, value in result.items()]
    return [tensor(names[0] if names else "output0", result)]


def tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, str | bytes):
        return Tensor(name, "BYTES", [1], [value])
    if isinstance(value, dict):
        return Tensor(name, "BYTES", [1], [json.dumps(value, default=str)])
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind in "USO":
        flat = [item if isinstance(item, str | bytes) else json.dumps(item, default=str) for item in array.ravel()]
        return Tensor(name, "BYTES", list(array.shape), _nest(flat, list(array.shape)))
    datatype = DATATYPES.get(array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype)
    if datatype is None:
        raise InvalidArgument(f"output '{name}': numpy dtype {array.dtype} has no V2 datatype")
    return Tensor(name, datatype, list(array.shape), array)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for part in value for item in _flatten(part)]
    return [value]


def _flat_bytes(value: Any) -> list[bytes]:
    return [item.encode() if isinstance(item, str) else bytes(item) for item in _flatten(value)]


def fill_response(response: Any, tensors: list[Tensor], raw: bool) -> None:
    """Write outputs into a ModelInferResponse: raw little-endian bytes, or typed contents."""
    for t in tensors:
        output = response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if t.datatype == "BYTES":
            items = _flat_bytes(t.value)
            if raw:
                response.raw_output_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in items))
            else:
                output.contents.bytes_contents.extend(items)
            continue
        array = np.ascontiguousarray(t.value, dtype=DTYPES[t.datatype].newbyteorder("<"))
        if raw or t.datatype == "FP16":
            response.raw_output_contents.append(array.tobytes())
        else:
            getattr(output.contents, CONTENTS[t.datatype]).extend(array.ravel().tolist())


# -- the JSON form (V2 paths through Invoke) -----------------------------------------------------------
def from_json(item: dict[str, Any]) -> Tensor:
    """``{"name", "shape", "datatype", "data"}`` as KServe's REST protocol writes tensors."""
    try:
        name, datatype, shape, data = item["name"], item["datatype"], item["shape"], item["data"]
    except (KeyError, TypeError):
        raise InvalidArgument("each input needs name, shape, datatype and data") from None
    if not isinstance(name, str):
        raise InvalidArgument(f"an input's name must be a string, not {type(name).__name__}")
    dtype = _dtype(name, datatype)
    shape = _shape(name, dtype, shape)
    flat = _flatten(data)
    if len(flat) != math.prod(shape):
        raise InvalidArgument(f"input '{name}': {len(flat)} values do not match shape {shape}")
    if dtype is None:
        return Tensor(name, datatype, shape, _nest(flat, shape))
    return Tensor(name, datatype, shape, _json_array(name, datatype, dtype, flat).reshape(shape))


def _json_array(name: str, datatype: str, dtype: np.dtype, values: list[Any]) -> np.ndarray:
    """JSON values as an array of `dtype`, each checked first: numpy raises on some values (text for
    FP32) and silently wraps or truncates others (300 for INT8, 1.5 for INT32)."""
    if dtype.kind == "b":
        expected, fits = "true or false", lambda v: isinstance(v, bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        expected, fits = f"an integer in {info.min}..{info.max}", lambda v: _is_integer(v) and info.min <= v <= info.max
    else:
        expected, fits = "a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    for value in values:
        if not fits(value):
            raise InvalidArgument(f"input '{name}': {str(value)[:64]} is not {expected} ({datatype})")
    try:
        return np.asarray(values, dtype=dtype)
    except OverflowError:  # an int too large for any float
        raise InvalidArgument(f"input '{name}': a value is out of range for {datatype}") from None


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def to_json(t: Tensor) -> dict[str, Any]:
    if t.datatype == "BYTES":
        data = [item.decode(errors="replace") if isinstance(item, bytes) else item for item in _flatten(t.value)]
    else:
        data = np.asarray(t.value).ravel().tolist()
    return {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": data}
