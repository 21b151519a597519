from servegraph.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("name", "endpoints", "fingerprint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    fingerprint: str
    def __init__(self, name: _Optional[str] = ..., endpoints: _Optional[_Iterable[str]] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("body", "request_id", "endpoint", "operation", "call_id")
    BODY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    body: _types_pb2.Payload
    request_id: str
    endpoint: str
    operation: str
    call_id: int
    def __init__(self, body: _Optional[_Union[_types_pb2.Payload, _Mapping]] = ..., request_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., operation: _Optional[str] = ..., call_id: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("result", "call_id", "error_code", "error_message")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    result: _types_pb2.Payload
    call_id: int
    error_code: str
    error_message: str
    def __init__(self, result: _Optional[_Union[_types_pb2.Payload, _Mapping]] = ..., call_id: _Optional[int] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class PredictChunks(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[_types_pb2.Payload]
    def __init__(self, chunks: _Optional[_Iterable[_Union[_types_pb2.Payload, _Mapping]]] = ...) -> None: ...

class PredictBatch(_message.Message):
    __slots__ = ("requests", "cancelled")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PredictRequest]
    cancelled: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, requests: _Optional[_Iterable[_Union[PredictRequest, _Mapping]]] = ..., cancelled: _Optional[_Iterable[int]] = ...) -> None: ...

class PredictResults(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[PredictResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[PredictResponse, _Mapping]]] = ...) -> None: ...
