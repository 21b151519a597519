"""The typed codec: Python values <-> protobuf, for bodies that cross a socket.

Bodies are JSON-compatible values plus bytes and numpy arrays. Arrays and bytes never become
JSON lists: each is cut out into a `Tensor` (dtype, shape, raw little-endian bytes) and leaves a
``{"$tensor": i}`` marker in the JSON part; reading back builds arrays over the received bytes
without copying (they are read-only). Nothing is ever unpickled.

Two JSON carriers: ``google.protobuf.Value`` for the public service (writable by hand in grpcurl;
numbers are doubles there, so integral numbers come back as ints) and JSON text (`Payload`) between
router and workers, which is faster and exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from .errors import InvalidArgument
from .v1 import types_pb2

TENSOR_KEY = "$tensor"
BYTES_DTYPE = "bytes"
_MAX_EXACT_INT = 2**53
MAX_DIMS = 64  # numpy's limit
_MAX_BYTES = 2**63 - 1  # numpy's limit on an array's size, zero dimensions aside
# Plain numeric and bool dtypes by name: a tensor's dtype string is looked up here, never parsed by
# numpy, which would also build structured, subarray, object and datetime dtypes from strings.
DTYPES: dict[str, np.dtype] = {
    np.dtype(code).name: np.dtype(code).newbyteorder("<")
    for code in np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?"
}


class _Extractor:
    """Writes the arrays and byte strings of a value into `tensors` (a message's repeated field, filled
    in place: adding a built Tensor to it would copy its bytes again), handing back their markers."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: Any) -> None:
        self.tensors = tensors

    def marker(self, value: Any) -> dict[str, int] | Any:
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "OUSV":
                return value.tolist()
            encode_tensor(value, self.tensors.add())
        elif isinstance(value, bytes | bytearray | memoryview):
            self.tensors.add(dtype=BYTES_DTYPE, data=bytes(value))
        elif isinstance(value, np.generic):
            return value.item()
        else:
            raise InvalidArgument(
                f"cannot encode a {type(value).__name__} value: use JSON values, bytes or numpy arrays"
            )
        return {TENSOR_KEY: len(self.tensors) - 1}


def encode_tensor(array: np.ndarray, tensor: types_pb2.Tensor | None = None) -> types_pb2.Tensor:
    array = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray makes 0-d arrays 1-d
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    tensor = tensor if tensor is not None else types_pb2.Tensor()
    tensor.dtype = array.dtype.name
    tensor.shape.extend(array.shape)
    tensor.data = array.tobytes()
    return tensor


def decode_tensor(tensor: types_pb2.Tensor, where: str = "tensor") -> np.ndarray | bytes:
    """A read-only array over the message's bytes; INVALID_ARGUMENT when dtype or size is wrong."""
    if tensor.dtype == BYTES_DTYPE:
        return tensor.data
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument(
            f"{where}: dtype {tensor.dtype[:64]!r} is not a numeric numpy dtype name ({', '.join(DTYPES)}) or 'bytes'"
        )
    shape = check_shape(where, tensor.shape, dtype.itemsize)
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(
            f"{where}: {len(tensor.data)} bytes do not match dtype {dtype.name} and shape {list(shape)} "
            f"({expected} bytes expected)"
        )
    return np.frombuffer(tensor.data, dtype).reshape(shape)


def check_shape(where: str, shape: Any, itemsize: int) -> tuple[int, ...]:
    """`shape` as a tuple numpy accepts for a dtype of `itemsize`, else InvalidArgument.

    Checked before any array is built, since numpy's own refusals (ValueError, OverflowError) would
    surface as internal errors: dimensions must be non-negative ints, at most 64 of them, and the
    non-zero ones must multiply to an array numpy can address, even when another dimension is 0.
    """
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise InvalidArgument(f"{where}: shape must be a list of dimensions, not {type(shape).__name__}")
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"{where}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are allowed")
    if not all(isinstance(dim, int | np.integer) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
        raise InvalidArgument(f"{where}: shape {list(shape)} must hold non-negative integers")
    dims = tuple(int(dim) for dim in shape)
    if math.prod(dim for dim in dims if dim) * itemsize > _MAX_BYTES:
        raise InvalidArgument(f"{where}: shape {list(dims)} is too large for an array")
    return dims


def _tensor_ref(tensors: Sequence[Any], index: Any) -> Any:
    if not isinstance(index, int | float) or not 0 <= index < len(tensors) or int(index) != index:
        raise InvalidArgument(f"marker {{'{TENSOR_KEY}': {index!r}}} points to no tensor ({len(tensors)} sent)")
    return tensors[int(index)]


# -- JSON text (worker payloads) ------------------------------------------------------------------
def to_payload(value: Any, payload: types_pb2.Payload | None = None) -> types_pb2.Payload:
    payload = payload if payload is not None else types_pb2.Payload()
    payload.json = json.dumps(value, default=_Extractor(payload.tensors).marker, separators=(",", ":")).encode()
    return payload


def from_payload(payload: types_pb2.Payload) -> Any:
    if not payload.json:
        return None
    try:
        if not payload.tensors:
            return json.loads(payload.json)
        tensors = [decode_tensor(t, f"tensor {i}") for i, t in enumerate(payload.tensors)]

        def restore(obj: dict[str, Any]) -> Any:
            if len(obj) == 1 and TENSOR_KEY in obj:
                return _tensor_ref(tensors, obj[TENSOR_KEY])
            return obj

        return json.loads(payload.json, object_hook=restore)
    except ValueError as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"malformed JSON payload: {exc}") from None


# -- google.protobuf.Value (public service) ------------------------------------------------------
def to_value(value: Any, target: struct_pb2.Value, tensors: Any) -> None:
    """Write `value` into the Value `target`, appending its arrays and bytes to `tensors`."""
    _fill(value, target, _Extractor(tensors))


def from_value(value: struct_pb2.Value, tensors: Sequence[types_pb2.Tensor] = ()) -> Any:
    decoded = [decode_tensor(t, f"tensor {i}") for i, t in enumerate(tensors)] if tensors else ()
    return _read(value, decoded)


def _fill(value: Any, target: struct_pb2.Value, extractor: _Extractor) -> None:
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif value is True or value is False:
        target.bool_value = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, dict):
        fields = target.struct_value.fields
        if not value:
            target.struct_value.SetInParent()
        for key, item in value.items():
            _fill(item, fields[key if isinstance(key, str) else str(key)], extractor)
    elif isinstance(value, list | tuple):
        items = target.list_value
        items.SetInParent()
        for item in value:
            _fill(item, items.values.add(), extractor)
    else:
        replacement = extractor.marker(value)
        _fill(replacement, target, extractor)


def _read(value: struct_pb2.Value, tensors: Sequence[Any]) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        fields = value.struct_value.fields
        if len(fields) == 1 and TENSOR_KEY in fields:
            return _tensor_ref(tensors, _read(fields[TENSOR_KEY], tensors))
        return {key: _read(item, tensors) for key, item in fields.items()}
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) < _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "list_value":
        return [_read(item, tensors) for item in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    return None
