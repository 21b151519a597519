"""The router's end of a worker's Predict stream: many unary calls in flight on one gRPC stream.

A gRPC call costs the router ~250 µs of CPU, and a message on an open stream about half that,
which for small models is most of the price of running them in another process. So calls share
one stream, and a message carries every request that was waiting to be written: while one message
is being written the next calls gather into the next. At one call at a time that is a message a
call; under load one message serves many. Requests carry a call_id; a reader task hands each
response to the caller waiting for that id. When the stream breaks (the worker died) every waiting
call fails with `StreamClosed`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import grpc

from ..v1 import worker_pb2, worker_pb2_grpc


class StreamClosed(ConnectionError):
    """The worker's stream ended while the call waited for its answer."""


class CallStream:
    def __init__(self, stub: worker_pb2_grpc.WorkerStub):
        self._call = stub.Predict()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[worker_pb2.PredictResponse]] = {}
        self._batch = worker_pb2.PredictBatch()
        self._queued = asyncio.Event()
        self._writer = asyncio.create_task(self._write(), name="worker-calls-write")
        self._reader = asyncio.create_task(self._read(), name="worker-calls-read")

    async def call(self, fill: Callable[[worker_pb2.PredictRequest], None]) -> worker_pb2.PredictResponse:
        """Send the request that `fill` writes (into the next message, so it is never copied)."""
        if self._reader.done() or self._writer.done():
            raise StreamClosed("the worker's call stream is closed")
        request = self._batch.requests.add()
        try:
            fill(request)
        except BaseException:
            del self._batch.requests[-1]
            raise
        request.call_id = call_id = next(self._ids)
        answer = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        self._queued.set()
        try:
            return await answer
        finally:
            self._waiting.pop(call_id, None)

    async def close(self) -> None:
        """Cancel the stream and wait for its tasks (a cancellation of the caller itself still propagates)."""
        self._call.cancel()
        self._writer.cancel()
        self._reader.cancel()
        await asyncio.wait([self._writer, self._reader])

    async def _write(self) -> None:
        try:
            while True:
                await self._queued.wait()
                self._queued.clear()
                batch, self._batch = self._batch, worker_pb2.PredictBatch()
                await self._call.write(batch)
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            self._fail_waiting(f"the worker's call stream broke: {error}")

    async def _read(self) -> None:
        try:
            async for results in self._call:
                for response in results.responses:
                    answer = self._waiting.get(response.call_id)
                    if answer is not None and not answer.done():
                        answer.set_result(response)
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            self._fail_waiting("the worker's call stream ended")

    def _fail_waiting(self, reason: str) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(StreamClosed(reason))
