"""The model worker process: loads its models, then serves `servegraph.v1.Worker` on a Unix socket.

Started by the router as a fresh interpreter (``python -m servegraph.workers.worker``) with its
models' declarations as JSON on stdin: each model with the proxies it serves and their artifacts,
so a call names only its endpoint. Models are imported by path and loaded here, never in the
router. Sync predicts run on one worker thread, so a worker process handles one sync call (or one
batch, for a model with ``predict_batch``) at a time (scale with processes); async predicts run on
the worker's event loop. gRPC health says
SERVING once every model has loaded. The worker exits when its parent (the router) dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

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


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, models: list[HostedModel]):
        self.endpoints = {endpoint: model for model in models for endpoint in (model.spec.name, *model.proxies)}
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="predict")
        self.batchers = {model.spec.name: Batcher(model, self.thread) for model in models if model.batches}

    async def Predict(
        self, batches: AsyncIterator[worker_pb2.PredictBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.PredictResults]:
        """Serve the router's unary calls as they arrive on the stream, answering each when done
        (the answers ready together in one message)."""

        async def requests() -> AsyncIterator[worker_pb2.PredictRequest]:
            async for batch in batches:
                for request in batch.requests:
                    yield request

        async for answers in answer_concurrently(requests(), self._answer):
            results = worker_pb2.PredictResults()
            for write in answers:
                write(results.responses.add())
            yield results

    async def _answer(
        self, request: worker_pb2.PredictRequest
    ) -> AsyncIterator[Callable[[worker_pb2.PredictResponse], None]]:
        """How to write the answer into its place in the outgoing message (building a response apart
        and adding it to the message would copy it: milliseconds for a tensor of a few MB)."""
        try:
            result = await self._predict(request)
        except Exception as error:
            yield functools.partial(_write_answer, request=request, error=error)
        else:
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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread, model.predict, body, request.endpoint)

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


def watch_parent(parent: int, socket: str) -> None:
    """Exit with the router: the kernel signals us when it dies (Linux), else a poll notices."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        clean_up_after(parent, socket)
        os._exit(0)

    async def poll() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        clean_up_after(parent, socket)
        os._exit(0)

    asyncio.get_running_loop().create_task(poll())


def clean_up_after(parent: int, socket: str) -> None:
    """A router that died (SIGKILL) left its private socket directory behind: its last worker removes it.

    A live router removes both itself, and needs the directory to restart a worker that stopped.
    """
    if os.getppid() == parent:
        return
    with contextlib.suppress(OSError):
        os.unlink(socket)
    with contextlib.suppress(OSError):  # fails while other workers' sockets are still in it
        os.rmdir(os.path.dirname(socket))


async def serve(name: str, socket: str, placements: dict[str, Any], parent: int) -> None:
    watch_parent(parent, socket)
    models = load_models(placements)
    server = grpc.aio.server(options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerService(models), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"unix:{socket}"
    server.add_insecure_port(address)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"serving worker '{name}' on {address}", flush=True)
    await stopping.wait()
    await server.stop(1.0)
    clean_up_after(parent, socket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servegraph-worker")
    parser.add_argument("--name", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout)
    placements = json.load(sys.stdin)
    try:
        uvloop.run(serve(args.name, args.socket, placements, args.parent))
    except Exception:
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        return 3
    # Stopped (by the router, or because it died): exit now. A normal exit would first wait for a
    # predict still running on the predict thread, however long it takes.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
