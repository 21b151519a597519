"""A handle per placed model, the same two calls wherever the model lives: `call` and `stream`.

`LocalHandle` calls a model loaded in the router; `WorkerHandle` calls one in a worker process (or in
each process of a pool, or in each replica of a remote worker) over gRPC. A call names the endpoint it
came through (a shared model's proxy, or the model itself) and carries the body: the worker already
knows each proxy's artifact.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from .. import codec
from ..aio import ChunkPump
from ..errors import DeadlineExceeded, RemoteError, ResourceExhausted, Unavailable
from ..models.batching import Batcher
from ..models.hosted import HostedModel, prediction_method
from ..models.spec import ModelSpec
from ..v1 import worker_pb2
from .calls import StreamClosed
from .link import WorkerLink
from .pool import WorkerPool
from .process import START_TIMEOUT


class ModelHandle:
    """Calls one model wherever it lives; `timeout` (seconds) bounds every call.

    Admission: the model runs `capacity` calls at once (batch size times processes or threads); past
    that, calls wait, and once ``max_queued`` wait a new call fails at once with RESOURCE_EXHAUSTED
    while those already waiting complete. An async predict runs every call at once (an I/O-bound
    model awaiting a remote API has no queue of its own) unless it declares a batch size, as `LLModel`
    does for its decode batch.
    """

    def __init__(self, spec: ModelSpec, streams: bool):
        self.spec = spec
        self.streams = streams
        self.timeout = spec.timeout
        self.in_flight = 0
        declared = "max_batch_size" in spec.parameters or hasattr(spec.model_class, "default_max_batch_size")
        self.unbounded = prediction_method(spec) == "predict_async" and not declared

    @property
    def capacity(self) -> int:
        """Calls the model runs at once."""
        return sys.maxsize if self.unbounded else self.spec.max_batch_size * self.slots

    @property
    def slots(self) -> int:
        """Where calls run side by side: threads, processes or replicas."""
        raise NotImplementedError

    @property
    def queued(self) -> int:
        """Calls waiting for the model (a metric, read from any thread)."""
        return max(0, self.in_flight - self.capacity)

    async def call(self, body: Any, endpoint: str, operation: str | None = None, request_id: str = "") -> Any:
        """The model's predict on `body` (or its custom ``op_<operation>``)."""
        self._admit(endpoint)
        self.in_flight += 1
        try:
            if self.timeout is None:  # most models: no timer to arm and cancel on every call
                return await self._call(body, endpoint, operation, request_id)
            async with asyncio.timeout(self.timeout):
                return await self._call(body, endpoint, operation, request_id)
        except TimeoutError:
            raise self._deadline(endpoint) from None
        finally:
            self.in_flight -= 1

    def ready(self) -> bool:
        return True

    async def stream(self, body: Any, endpoint: str, request_id: str = "") -> AsyncIterator[Any]:
        self._admit(endpoint)
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout):
                async for chunk in self._stream(body, endpoint, request_id):
                    yield chunk
        except TimeoutError:
            raise self._deadline(endpoint) from None
        finally:
            self.in_flight -= 1

    def _admit(self, endpoint: str) -> None:
        if self.queued >= self.spec.max_queued:
            raise ResourceExhausted(
                f"model {self._named(endpoint)} has {self.queued} calls waiting (max_queued={self.spec.max_queued}); "
                "try again later"
            )

    def _deadline(self, endpoint: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"model {self._named(endpoint)} did not answer within its {self.timeout}s timeout")

    def _named(self, endpoint: str) -> str:
        """How errors name the model: a shared model's proxy endpoint too, as the caller knows it by that."""
        if endpoint != self.spec.name:
            return f"'{endpoint}' (shared model '{self.spec.name}')"
        return f"'{self.spec.name}'"

    async def _call(self, body: Any, endpoint: str, operation: str | None, request_id: str) -> Any:
        raise NotImplementedError

    def _stream(self, body: Any, endpoint: str, request_id: str) -> AsyncIterator[Any]:
        raise NotImplementedError


class LocalHandle(ModelHandle):
    """A model loaded in the router: inline (naive), on the event loop (asyncio) or in threads."""

    def __init__(self, model: HostedModel, executor: ThreadPoolExecutor | None, threads: int = 1):
        super().__init__(model.spec, model.streams)
        self.model = model
        self.threads = threads
        self.executor = executor
        self.batcher = Batcher(model, executor) if model.batches else None

    @property
    def slots(self) -> int:
        return self.threads

    async def _call(self, body: Any, endpoint: str, operation: str | None, request_id: str) -> Any:
        if operation:
            return await self.model.operation(operation, body)
        if self.batcher is not None:
            return await self.batcher.submit(body)
        if self.model.is_async:
            return await self.model.predict_async(body, endpoint)
        if self.executor is None:
            return self.model.predict(body, endpoint)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.model.predict, body, endpoint)

    async def _stream(self, body: Any, endpoint: str, request_id: str) -> AsyncIterator[Any]:
        if self.model.is_async:
            async for chunk in self.model.stream_async(body, endpoint):
                yield chunk
            return
        chunks = self.model.stream(body, endpoint)
        if self.executor is None:  # naive: inline, as asked
            for chunk in chunks:
                yield chunk
            return
        async for chunk in ChunkPump(chunks, self.executor, coalesce=True):
            yield chunk


class WorkerHandle(ModelHandle):
    """A model in a worker process (or in each process of the pool, or each replica), called over gRPC."""

    def __init__(self, spec: ModelSpec, streams: bool, workers: WorkerPool):
        super().__init__(spec, streams)
        self.workers = workers

    @property
    def slots(self) -> int:
        """Processes or replicas (replicas come and go)."""
        return max(1, len(self.workers.processes))

    def ready(self) -> bool:
        return any(not (worker.is_down() or worker.is_hung()) for worker in self.workers.processes)

    def _fill(
        self, request: worker_pb2.PredictRequest, body: Any, endpoint: str, request_id: str, operation: str = ""
    ) -> None:
        request.endpoint = endpoint
        request.request_id = request_id
        request.operation = operation
        codec.to_payload(body, request.body)

    async def _call(self, body: Any, endpoint: str, operation: str | None, request_id: str) -> Any:
        worker = self.workers.pick()
        await worker.wait_ready(self.timeout or START_TIMEOUT)
        worker.in_flight += 1
        try:
            response = await worker.calls.call(  # type: ignore[union-attr]
                lambda request: self._fill(request, body, endpoint, request_id, operation or ""), self.timeout
            )
        except StreamClosed:
            raise self._unavailable(worker, endpoint) from None
        finally:
            worker.in_flight -= 1
        if response.error_code:
            raise RemoteError(response.error_code, response.error_message)
        return codec.from_payload(response.result)

    async def _stream(self, body: Any, endpoint: str, request_id: str) -> AsyncIterator[Any]:
        request = worker_pb2.PredictRequest()
        self._fill(request, body, endpoint, request_id)
        worker = self.workers.pick()
        stub = await worker.wait_ready(self.timeout or START_TIMEOUT)
        worker.in_flight += 1
        call = stub.PredictStream(request)
        try:
            async for message in call:
                for chunk in message.chunks:
                    yield codec.from_payload(chunk)
        except grpc.RpcError as error:
            raise self._failure(worker, error, endpoint) from None
        except asyncio.CancelledError:  # grpc.aio cancels the calls cut by a dead worker's channel closing
            if _cancelling():
                raise
            raise self._unavailable(worker, endpoint) from None
        finally:
            worker.in_flight -= 1
            call.cancel()

    def _failure(self, worker: WorkerLink, error: grpc.RpcError, endpoint: str) -> Exception:
        code = error.code()  # type: ignore[attr-defined]
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or worker.is_down():
            return self._unavailable(worker, endpoint)
        return RemoteError(code.name, error.details() or code.name)  # type: ignore[attr-defined]

    def _unavailable(self, worker: WorkerLink, endpoint: str) -> Unavailable:
        return Unavailable(f"model {self._named(endpoint)} is unavailable: {worker.lost()}")


def _cancelling() -> bool:
    """Whether the current task is being cancelled (a CancelledError not caused by someone else's close)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
