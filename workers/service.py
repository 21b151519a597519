"""The worker service: the router's calls to the models this worker process hosts.

Unary calls arrive many at a time on one Predict stream (`answer_concurrently` answers each as it
finishes, every answer ready at once in one message); streaming calls come one per PredictStream.
A call names its endpoint (a model, or a shared model's proxy) and carries the body only: proxies
and their artifacts were declared when the worker started (`load_models`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from servegraph import codec
from servegraph.aio import ChunkPump, answer_concurrently
from servegraph.errors import NotFound, ServingError, describe, status_of
from servegraph.models.artifacts import ModelArtifact
from servegraph.models.batching import Batcher
from servegraph.models.hosted import HostedModel
from servegraph.models.spec import ModelSpec
from servegraph.rpc_errors import reports_errors
from servegraph.v1 import types_pb2, worker_pb2, worker_pb2_grpc

logger = logging.getLogger("servegraph.worker")

NOTICE = 1.5
"""Seconds a draining worker keeps serving while connected routers notice its NOT_SERVING (they check
its health every second) and stop sending it calls."""


class Cancelled(ServingError):
    """The answer to a call the router cancelled (its caller gave up), which nobody waits for."""

    code = "CANCELLED"

    def __init__(self) -> None:
        super().__init__("the router cancelled the call")


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, name: str, models: list[HostedModel], fingerprint: str):
        self.info = worker_pb2.WorkerInfo(name=name, fingerprint=fingerprint)
        self.endpoints = {endpoint: model for model in models for endpoint in (model.spec.name, *model.proxies)}
        self.info.endpoints.extend(self.endpoints)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="predict")
        self.batchers = {model.spec.name: Batcher(model, self.thread) for model in models if model.batches}
        self.in_flight = 0
        """Calls received and not yet answered, streams included: what a drain waits for."""
        self.routers = 0
        """Open Predict streams: routers that may still send calls."""

    async def Info(self, request: worker_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> worker_pb2.WorkerInfo:
        return self.info

    async def drain(self, grace: float) -> None:
        """Wait, `grace` seconds at most, until every call in flight is answered and the routers have had
        `NOTICE` to see the NOT_SERVING and stop sending (no wait for that when none is connected)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (elapsed := loop.time() - started) < grace:
            if self.in_flight == 0 and (self.routers == 0 or elapsed >= NOTICE):
                return
            await asyncio.sleep(0.05)

    async def Predict(
        self, batches: AsyncIterator[worker_pb2.PredictBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.PredictResults]:
        """Serve the router's unary calls as they arrive on the stream, answering each when done
        (the answers ready together in one message). A call the router cancels is skipped if it has
        not started, and cancelled if it runs on the event loop."""
        calls: dict[int, asyncio.Task[Any] | None] = {}
        """The calls not cancelled nor answered yet: the task answering each, once it has started."""
        unanswered = 0

        async def requests() -> AsyncIterator[worker_pb2.PredictRequest]:
            nonlocal unanswered
            async for batch in batches:
                for request in batch.requests:
                    calls[request.call_id] = None
                    unanswered += 1
                    self.in_flight += 1
                    yield request
                for call_id in batch.cancelled:
                    if task := calls.pop(call_id, None):
                        task.cancel()

        self.routers += 1
        try:
            async for answers in answer_concurrently(requests(), functools.partial(self._answer, calls=calls)):
                results = worker_pb2.PredictResults()
                for write in answers:
                    write(results.responses.add())
                yield results  # counted as answered once gRPC has taken the message
                unanswered -= len(answers)
                self.in_flight -= len(answers)
        finally:
            self.routers -= 1
            self.in_flight -= unanswered

    async def _answer(
        self, request: worker_pb2.PredictRequest, calls: dict[int, asyncio.Task[Any] | None]
    ) -> AsyncIterator[Callable[[worker_pb2.PredictResponse], None]]:
        """How to write the answer into its place in the outgoing message (building a response apart
        and adding it to the message would copy it: milliseconds for a tensor of a few MB)."""
        if request.call_id not in calls:  # cancelled before it started
            yield functools.partial(_write_answer, request=request, error=Cancelled())
            return
        calls[request.call_id] = asyncio.current_task()
        try:
            result = await self._predict(request)
        except asyncio.CancelledError:
            if calls.pop(request.call_id, None):  # not the router's cancel: the stream is closing
                raise
            yield functools.partial(_write_answer, request=request, error=Cancelled())
        except Exception as error:
            calls.pop(request.call_id, None)
            yield functools.partial(_write_answer, request=request, error=error)
        else:
            calls.pop(request.call_id, None)
            yield functools.partial(_write_answer, request=request, result=result)

    async def _predict(self, request: worker_pb2.PredictRequest) -> Any:
        model = self._model(request.endpoint)
        body = codec.from_payload(request.body)
        if request.operation:
            return await model.operation(request.operation, body)
        if batcher := self.batchers.get(model.spec.name):
            return await batcher.submit(body)
        if model.is_async:
            return await model.predict_async(body, request.endpoint)
        return await self._on_thread(model.predict, body, request.endpoint)

    async def _on_thread(self, predict: Callable[..., Any], *args: Any) -> Any:
        """Run on the predict thread. Cancelled before it starts, it never runs; once started it cannot
        be stopped, so the cancelled call ends only with it: the router tells a hung predict by the
        answer that does not come."""
        future = self.thread.submit(predict, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(future)
            raise

    @reports_errors
    async def PredictStream(
        self, request: worker_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.PredictChunks]:
        model = self._model(request.endpoint)
        body = codec.from_payload(request.body)
        if model.is_async:
            batches = ([chunk] async for chunk in model.stream_async(body, request.endpoint))
        else:
            batches = ChunkPump(model.stream(body, request.endpoint), self.thread, coalesce=True).batches()
        self.in_flight += 1
        try:
            async with contextlib.aclosing(batches):  # a cancelled call stops the model now, not when collected
                async for chunks in batches:
                    message = worker_pb2.PredictChunks()
                    for chunk in chunks:
                        try:
                            _encode_result(chunk, message.chunks.add())
                        except ServingError:  # the chunks before it are the caller's still
                            del message.chunks[-1]
                            if message.chunks:
                                yield message
                            raise
                    yield message
        finally:
            self.in_flight -= 1

    def _model(self, endpoint: str) -> HostedModel:
        model = self.endpoints.get(endpoint)
        if model is None:
            raise NotFound(f"this worker serves no endpoint '{endpoint}' (it serves {', '.join(self.endpoints)})")
        return model


def _write_answer(
    response: worker_pb2.PredictResponse,
    request: worker_pb2.PredictRequest,
    result: Any = None,
    error: Exception | None = None,
) -> None:
    """A call's result, or its failure; a result the codec cannot carry fails that call alone."""
    response.call_id = request.call_id
    if error is None:
        try:
            _encode_result(result, response.result)
            return
        except ServingError as failure:
            response.ClearField("result")
            error = failure
    if not isinstance(error, ServingError):  # errors the caller made are its to see; the rest are bugs to log
        logger.error("endpoint '%s' failed (request %s)", request.endpoint, request.request_id or "-", exc_info=error)
    response.error_code, response.error_message = status_of(error), describe(error)


def _encode_result(result: Any, payload: types_pb2.Payload) -> None:
    """A result (or a stream's chunk) the codec cannot carry is the model's fault, not the caller's:
    INTERNAL, where the codec itself says INVALID_ARGUMENT (right for what a client sent)."""
    try:
        codec.to_payload(result, payload)
    except Exception as failure:
        raise ServingError(f"the model's result cannot be sent back: {failure}") from None


def load_models(placements: dict[str, Any]) -> list[HostedModel]:
    """Each model of the worker's declaration (``{name: {"spec": ..., "proxies": {...}}}``), loaded."""
    models = []
    for name, placement in placements.items():
        proxies = {
            endpoint: ModelArtifact.from_dict(artifact) for endpoint, artifact in placement.get("proxies", {}).items()
        }
        model = HostedModel(ModelSpec.from_dict(name, placement["spec"]), proxies)
        model.load()
        models.append(model)
    return models
