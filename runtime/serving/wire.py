"""What arrives off the wire before the engine sees it: request messages and request ids.

grpc parses a request with the handler's deserializer before the servicer runs; an exception there
ends the call with UNKNOWN ("Unexpected DecodeError") and never reaches our code. So request
messages are parsed with `lenient` deserializers, which hand unparseable bytes on as `Undecodable`,
and the methods turn those into INVALID_ARGUMENT with `parsed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument

MAX_REQUEST_ID = 256


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are no valid `message` (corrupt protobuf, bad UTF-8, nested too deep)."""

    message: str
    reason: str


def lenient(message_class: Any) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: the parsed message, or an `Undecodable`."""
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as error:  # DecodeError, and whatever else the parser may raise on hostile bytes
            return Undecodable(name, str(error) or type(error).__name__)

    return deserialize


def parsed(request: Any) -> Any:
    """The request a `lenient` deserializer produced; InvalidArgument when its bytes did not parse."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(f"the request is not a valid {request.message} message: {request.reason}")
    return request


def valid_request_id(value: str) -> str:
    """A caller's request id, checked before anything runs: it comes back as gRPC metadata, which
    takes only printable ASCII of bounded size (else the call would fail after the model ran)."""
    if len(value) > MAX_REQUEST_ID:
        raise InvalidArgument(f"request id is {len(value)} characters long; at most {MAX_REQUEST_ID} are allowed")
    if not value.isascii() or not value.isprintable():
        raise InvalidArgument(f"request id {value!r} must be printable ASCII")
    return value
