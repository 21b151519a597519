from google.protobuf import struct_pb2 as _struct_pb2
from servegraph.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvokeRequest(_message.Message):
    __slots__ = ("body", "path", "id", "tensors", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BODY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    body: _struct_pb2.Value
    path: str
    id: str
    tensors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    headers: _containers.ScalarMap[str, str]
    def __init__(self, body: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., path: _Optional[str] = ..., id: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("body", "id", "tensors")
    BODY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    body: _struct_pb2.Value
    id: str
    tensors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    def __init__(self, body: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., id: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("name", "spec", "steps", "endpoints", "mermaid", "streaming")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MERMAID_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _struct_pb2.Struct
    steps: _containers.RepeatedCompositeFieldContainer[StepInfo]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    mermaid: str
    streaming: bool
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[StepInfo, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., mermaid: _Optional[str] = ..., streaming: _Optional[bool] = ...) -> None: ...

class StepInfo(_message.Message):
    __slots__ = ("name", "kind", "after", "outlets", "responder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    OUTLETS_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    after: _containers.RepeatedScalarFieldContainer[str]
    outlets: _containers.RepeatedScalarFieldContainer[str]
    responder: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., after: _Optional[_Iterable[str]] = ..., outlets: _Optional[_Iterable[str]] = ..., responder: _Optional[bool] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("name", "step", "kind", "model_class", "execution_mechanism")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_CLASS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MECHANISM_FIELD_NUMBER: _ClassVar[int]
    name: str
    step: str
    kind: str
    model_class: str
    execution_mechanism: str
    def __init__(self, name: _Optional[str] = ..., step: _Optional[str] = ..., kind: _Optional[str] = ..., model_class: _Optional[str] = ..., execution_mechanism: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStats]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointStats, _Mapping]]] = ...) -> None: ...

class EndpointStats(_message.Message):
    __slots__ = ("name", "requests", "failures", "p50_ms", "p99_ms", "tokens_in", "tokens_out", "in_flight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    tokens_in: int
    tokens_out: int
    in_flight: int
    def __init__(self, name: _Optional[str] = ..., requests: _Optional[int] = ..., failures: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...
