"""Where each model runs, and a handle to call it there.

`ModelHub` places every model of a graph when the engine starts: naive, asyncio and thread_pool
models are loaded in the router; each dedicated_process model and each shared model in a worker
process of its own; all process_pool models together in one pool of worker processes. Each
placement yields a `ModelHandle` with the same two calls, `call` and `stream`, so the model
runner never cares where a model lives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from . import codec
from .errors import DeadlineExceeded, GraphError, RemoteError, Unavailable
from .graph import Graph
from .models import IN_WORKERS, ModelArtifact, ModelRunnerStep, ModelSpec
from .v1 import worker_pb2
from .workers.calls import StreamClosed
from .workers.host import HostedModel, streams
from .workers.pool import WorkerPool
from .workers.process import START_TIMEOUT, WorkerProcess
from .workers.pump import ChunkPump

logger = logging.getLogger("servegraph.models")


class ModelHandle:
    """Calls one model wherever it lives; `timeout` (seconds) bounds every call."""

    def __init__(self, spec: ModelSpec, streams: bool):
        self.spec = spec
        self.streams = streams
        self.timeout = spec.timeout

    async def call(
        self,
        body: Any,
        endpoint: str | None = None,
        artifact: ModelArtifact | None = None,
        operation: str | None = None,
        request_id: str = "",
    ) -> Any:
        """The model's predict on `body` (or its custom ``op_<operation>``)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._call(body, endpoint, artifact, operation, request_id)
        except TimeoutError:
            raise self._deadline(endpoint) from None

    def ready(self) -> bool:
        return True

    async def stream(
        self, body: Any, endpoint: str | None = None, artifact: ModelArtifact | None = None, request_id: str = ""
    ) -> AsyncIterator[Any]:
        try:
            async with asyncio.timeout(self.timeout):
                async for chunk in self._stream(body, endpoint, artifact, request_id):
                    yield chunk
        except TimeoutError:
            raise self._deadline(endpoint) from None

    def _deadline(self, endpoint: str | None) -> DeadlineExceeded:
        return DeadlineExceeded(f"model {self._named(endpoint)} did not answer within its {self.timeout}s timeout")

    def _named(self, endpoint: str | None) -> str:
        """How errors name the model: a shared model's proxy endpoint too, as the caller knows it by that."""
        if endpoint and endpoint != self.spec.name:
            return f"'{endpoint}' (shared model '{self.spec.name}')"
        return f"'{self.spec.name}'"

    async def _call(
        self, body: Any, endpoint: str | None, artifact: ModelArtifact | None, operation: str | None, request_id: str
    ) -> Any:
        raise NotImplementedError

    def _stream(
        self, body: Any, endpoint: str | None, artifact: ModelArtifact | None, request_id: str
    ) -> AsyncIterator[Any]:
        raise NotImplementedError


class LocalHandle(ModelHandle):
    """A model loaded in the router: inline (naive), on the event loop (asyncio) or in threads."""

    def __init__(self, model: HostedModel, executor: ThreadPoolExecutor | None):
        super().__init__(model.spec, model.streams)
        self.model = model
        self.executor = executor

    async def _call(
        self, body: Any, endpoint: str | None, artifact: ModelArtifact | None, operation: str | None, request_id: str
    ) -> Any:
        if operation:
            return await self.model.operation(operation, body)
        if self.model.is_async:
            return await self.model.predict_async(body, endpoint, artifact)
        if self.executor is None:
            return self.model.predict(body, endpoint, artifact)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.model.predict, body, endpoint, artifact)

    async def _stream(
        self, body: Any, endpoint: str | None, artifact: ModelArtifact | None, request_id: str
    ) -> AsyncIterator[Any]:
        if self.model.is_async:
            async for chunk in self.model.stream_async(body, endpoint, artifact):
                yield chunk
            return
        chunks = self.model.stream(body, endpoint, artifact)
        if self.executor is None:  # naive: inline, as asked
            for chunk in chunks:
                yield chunk
            return
        async for chunk in ChunkPump(chunks, self.executor):
            yield chunk


class WorkerHandle(ModelHandle):
    """A model in a worker process (or in each process of the pool), called over gRPC."""

    def __init__(self, spec: ModelSpec, streams: bool, workers: WorkerPool):
        super().__init__(spec, streams)
        self.workers = workers

    def ready(self) -> bool:
        return any(not worker.is_down() for worker in self.workers.processes)

    def _fill(
        self,
        request: worker_pb2.PredictRequest,
        body: Any,
        endpoint: str | None,
        artifact: ModelArtifact | None,
        request_id: str,
        operation: str = "",
    ) -> None:
        request.model = self.spec.name
        request.request_id = request_id
        request.operation = operation
        codec.to_payload(body, request.body)
        if endpoint:
            request.endpoint = endpoint
            codec.to_payload(artifact.to_dict() if artifact else None, request.artifact)

    async def _call(
        self, body: Any, endpoint: str | None, artifact: ModelArtifact | None, operation: str | None, request_id: str
    ) -> Any:
        worker = self.workers.pick()
        await worker.wait_ready(self.timeout or START_TIMEOUT)
        worker.in_flight += 1
        try:
            response = await worker.calls.call(  # type: ignore[union-attr]
                lambda request: self._fill(request, body, endpoint, artifact, request_id, operation or "")
            )
        except StreamClosed:
            raise self._unavailable(worker, endpoint) from None
        finally:
            worker.in_flight -= 1
        if response.error_code:
            raise RemoteError(response.error_code, response.error_message)
        return codec.from_payload(response.result)

    async def _stream(
        self, body: Any, endpoint: str | None, artifact: ModelArtifact | None, request_id: str
    ) -> AsyncIterator[Any]:
        request = worker_pb2.PredictRequest()
        self._fill(request, body, endpoint, artifact, request_id)
        worker = self.workers.pick()
        stub = await worker.wait_ready(self.timeout or START_TIMEOUT)
        worker.in_flight += 1
        call = stub.PredictStream(request)
        try:
            async for response in call:
                yield codec.from_payload(response.result)
        except grpc.RpcError as error:
            raise self._failure(worker, error, endpoint) from None
        except asyncio.CancelledError:  # grpc.aio cancels the calls cut by a dead worker's channel closing
            if _cancelling():
                raise
            raise self._unavailable(worker, endpoint) from None
        finally:
            worker.in_flight -= 1
            call.cancel()

    def _failure(self, worker: WorkerProcess, error: grpc.RpcError, endpoint: str | None) -> Exception:
        code = error.code()  # type: ignore[attr-defined]
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or worker.is_down():
            return self._unavailable(worker, endpoint)
        return RemoteError(code.name, error.details() or code.name)  # type: ignore[attr-defined]

    def _unavailable(self, worker: WorkerProcess, endpoint: str | None) -> Unavailable:
        return Unavailable(
            f"model {self._named(endpoint)} is unavailable: its worker '{worker.name}' (pid {worker.pid}) "
            "stopped during the call and is being restarted"
        )


def _cancelling() -> bool:
    """Whether the current task is being cancelled (a CancelledError not caused by someone else's close)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ModelHub:
    """Loads and starts every model of a graph where its execution mechanism says."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.handles: dict[str, ModelHandle] = {}
        self.workers: list[WorkerProcess] = []
        self.pools: list[WorkerPool] = []
        self.executors: list[ThreadPoolExecutor] = []
        self._socket_dir: Path | None = None

    def models(self) -> dict[str, tuple[ModelSpec, ModelRunnerStep | None]]:
        """Every model to place: endpoint models with their step, and shared models (no step)."""
        found: dict[str, tuple[ModelSpec, ModelRunnerStep | None]] = {}
        for name, shared in self.graph.shared_models.items():
            found[name] = (shared.model, None)
        for name, (step, endpoint) in self.graph.endpoints().items():
            if endpoint.model is not None and name in self.graph.shared_models:  # handles are found by name
                raise GraphError(
                    f"step '{step.name}': model endpoint '{name}' has the name of a shared model; "
                    "endpoint and shared model names must be unique in a graph"
                )
            if endpoint.model is not None:
                found[name] = (endpoint.model, step)
        return found

    def hosts_workers(self) -> bool:
        """Whether some model runs in a worker process (which the router must then supervise)."""
        return any(spec.execution_mechanism in IN_WORKERS for spec, _ in self.models().values())

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        pooled: dict[str, ModelSpec] = {}
        dedicated: dict[str, ModelSpec] = {}
        step_executors: dict[str, ThreadPoolExecutor] = {}
        for name, (spec, step) in self.models().items():
            mechanism = spec.execution_mechanism
            if mechanism == "process_pool" and step is not None:
                pooled[name] = spec
            elif mechanism in ("process_pool", "dedicated_process"):
                dedicated[name] = spec
            else:
                executor = self._executor(step, step_executors) if mechanism == "thread_pool" else None
                model = HostedModel(spec)
                await asyncio.to_thread(model.load)
                self.handles[name] = LocalHandle(model, executor)
        if pooled or dedicated:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="servegraph-"))
        starting = []
        for name, spec in dedicated.items():
            worker = WorkerProcess(name, {name: spec}, self._socket_dir, device=spec.parameters.get("device"))  # type: ignore[arg-type]
            self.workers.append(worker)
            pool = WorkerPool([worker])
            self.pools.append(pool)
            self.handles[name] = WorkerHandle(spec, streams(spec), pool)
            starting.append(pool.start())
        if pooled:
            size = self._pool_size()
            processes = [
                WorkerProcess(f"pool-{i}", pooled, self._socket_dir)
                for i in range(size)  # type: ignore[arg-type]
            ]
            self.workers.extend(processes)
            pool = WorkerPool(processes)
            self.pools.append(pool)
            for name, spec in pooled.items():
                self.handles[name] = WorkerHandle(spec, streams(spec), pool)
            starting.append(pool.start())
        results = await asyncio.gather(*starting, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def stop(self) -> None:
        await asyncio.gather(*(pool.stop() for pool in self.pools), return_exceptions=True)
        for executor in self.executors:
            executor.shutdown(wait=False, cancel_futures=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _executor(self, step: ModelRunnerStep | None, by_step: dict[str, ThreadPoolExecutor]) -> ThreadPoolExecutor:
        key = step.name if step is not None else ""
        if key not in by_step:
            default = min(32, (os.cpu_count() or 1) + 4)
            threads = (step.max_threads if step else None) or self.graph.max_threads or default
            by_step[key] = ThreadPoolExecutor(threads, thread_name_prefix=f"models-{key or 'shared'}")
            self.executors.append(by_step[key])
        return by_step[key]

    def _pool_size(self) -> int:
        sizes = [
            step.max_processes
            for step in self.graph.steps.values()
            if isinstance(step, ModelRunnerStep) and step.max_processes
        ]
        return self.graph.max_processes or max(sizes, default=0) or os.cpu_count() or 1
