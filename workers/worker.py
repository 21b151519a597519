"""The model worker process: loads its models, then serves `servegraph.v1.Worker` on a Unix socket.

Started by the router as a fresh interpreter (``python -m servegraph.workers.worker``) with its
models' declarations as JSON on stdin; models are imported by path and loaded here, never in the
router. Sync predicts run on one worker thread, so a worker process handles one sync call at a
time (scale with processes); async predicts run on the worker's event loop. The worker exits when
its parent (the router) dies.
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

from servegraph import codec
from servegraph.concurrency import answer_concurrently
from servegraph.errors import NotFound, ServingError, describe, status_of
from servegraph.models import ModelArtifact, ModelSpec
from servegraph.v1 import worker_pb2, worker_pb2_grpc

from .host import HostedModel
from .process import READY  # not defined here: `python -m` would find this module imported by the package
from .pump import ChunkPump


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, models: dict[str, HostedModel]):
        self.models = models
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="predict")
        self.in_flight = 0

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
        model, body, endpoint, artifact = self._unpack(request)
        self.in_flight += 1
        try:
            if request.operation:
                return await model.operation(request.operation, body)
            if model.is_async:
                return await model.predict_async(body, endpoint, artifact)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.thread, model.predict, body, endpoint, artifact)
        finally:
            self.in_flight -= 1

    async def PredictStream(
        self, request: worker_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.PredictResponse]:
        self.in_flight += 1
        try:
            model, body, endpoint, artifact = self._unpack(request)
            if model.is_async:
                chunks = model.stream_async(body, endpoint, artifact)
            else:
                chunks = ChunkPump(model.stream(body, endpoint, artifact), self.thread).__aiter__()
            async for chunk in chunks:
                response = worker_pb2.PredictResponse()
                _encode_result(chunk, response)
                yield response
        except Exception as error:
            _log_failure(error, request)
            await context.abort(grpc.StatusCode[status_of(error)], describe(error))
        finally:
            self.in_flight -= 1

    async def Status(self, request: worker_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> Any:
        return worker_pb2.StatusResponse(
            models={name: True for name in self.models}, pid=os.getpid(), in_flight=self.in_flight
        )

    def _unpack(self, request: worker_pb2.PredictRequest) -> tuple[HostedModel, Any, str | None, ModelArtifact | None]:
        model = self.models.get(request.model)
        if model is None:
            raise NotFound(f"this worker has no model '{request.model}' (it hosts {', '.join(self.models)})")
        body = codec.from_payload(request.body)
        artifact = ModelArtifact.from_dict(codec.from_payload(request.artifact)) if request.endpoint else None
        return model, body, request.endpoint or None, artifact


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
            _encode_result(result, response)
            return
        except ServingError as failure:
            response.ClearField("result")
            error = failure
    _log_failure(error, request)
    response.error_code, response.error_message = status_of(error), describe(error)


def _encode_result(result: Any, response: worker_pb2.PredictResponse) -> None:
    """A result (or a stream's chunk) the codec cannot carry is the model's fault, not the caller's:
    INTERNAL, where the codec itself says INVALID_ARGUMENT (right for what a client sent)."""
    try:
        codec.to_payload(result, response.result)
    except Exception as failure:
        raise ServingError(f"the model's result cannot be sent back: {failure}") from None


def _log_failure(error: Exception, request: worker_pb2.PredictRequest) -> None:
    """Errors the caller made are its to see; anything else is a bug worth a traceback here."""
    if not isinstance(error, ServingError):
        logging.getLogger("servegraph.worker").error(
            "model '%s' failed (request %s)", request.model, request.request_id or "-", exc_info=error
        )


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


async def serve(socket: str, specs: dict[str, Any], parent: int) -> None:
    watch_parent(parent, socket)
    models = {name: HostedModel(ModelSpec.from_dict(name, spec)) for name, spec in specs.items()}
    for model in models.values():
        model.load()
    server = grpc.aio.server(options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerService(models), server)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(READY, flush=True)
    await stopping.wait()
    await server.stop(1.0)
    clean_up_after(parent, socket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servegraph-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout)
    specs = json.load(sys.stdin)
    try:
        uvloop.run(serve(args.socket, specs, args.parent))
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
