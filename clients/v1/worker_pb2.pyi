from servegraph.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("model", "body", "request_id", "endpoint", "artifact", "operation", "call_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    body: _types_pb2.Payload
    request_id: str
    endpoint: str
    artifact: _types_pb2.Payload
    operation: str
    call_id: int
    def __init__(self, model: _Optional[str] = ..., body: _Optional[_Union[_types_pb2.Payload, _Mapping]] = ..., request_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., artifact: _Optional[_Union[_types_pb2.Payload, _Mapping]] = ..., operation: _Optional[str] = ..., call_id: _Optional[int] = ...) -> None: ...

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

class PredictBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PredictRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[PredictRequest, _Mapping]]] = ...) -> None: ...

class PredictResults(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[PredictResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[PredictResponse, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("models", "pid", "in_flight")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    models: _containers.ScalarMap[str, bool]
    pid: int
    in_flight: int
    def __init__(self, models: _Optional[_Mapping[str, bool]] = ..., pid: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...
