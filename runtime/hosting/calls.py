"""The router's end of a worker's Predict stream: many unary calls in flight on one gRPC stream.

A gRPC call costs the router ~250 µs of CPU, and a message on an open stream about half that,
which for small models is most of the price of running them in another process. So calls share
one stream, and a message carries every request that was waiting to be written: while one message
is being written the next calls gather into the next. At one call at a time that is a message a
call; under load one message serves many. Requests carry a call_id; a reader task hands each
response to the caller waiting for that id. When the stream breaks (the worker died) every waiting
call fails with `StreamClosed`.

A caller that gives up (its client went away, or the model's timeout passed) sends the call's id in
the next message's `cancelled`: the worker skips the call if it has not started, cancels it if it is
async, and answers it either way. A call the worker has not answered `HUNG_GRACE` seconds past its
model's timeout means a predict that does not return: `on_hung` is told, and the worker restarted.
When the stream ends, `on_closed` is told at once (for a remote worker: before its next health check).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import grpc

from ..v1 import worker_pb2, worker_pb2_grpc

HUNG_GRACE = 2.0
"""Seconds past its model's timeout that a worker may take to answer a call before it counts as hung."""


class StreamClosed(ConnectionError):
    """The worker's stream ended while the call waited for its answer."""


class CallStream:
    def __init__(
        self,
        stub: worker_pb2_grpc.WorkerStub,
        on_hung: Callable[[], None],
        on_closed: Callable[[], None] | None = None,
    ):
        self._call = stub.Predict()
        self._on_hung = on_hung
        self._on_closed = on_closed
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[worker_pb2.PredictResponse]] = {}
        """Every call the worker has not answered yet, those whose caller gave up included."""
        self._hang_checks: dict[int, asyncio.TimerHandle] = {}
        """For each unanswered call with a timeout: the check, `HUNG_GRACE` past it, that it was answered."""
        self._batch = worker_pb2.PredictBatch()
        self._queued = asyncio.Event()
        self._writer = asyncio.create_task(self._write(), name="worker-calls-write")
        self._reader = asyncio.create_task(self._read(), name="worker-calls-read")

    async def call(
        self, fill: Callable[[worker_pb2.PredictRequest], None], timeout: float | None = None
    ) -> worker_pb2.PredictResponse:
        """Send the request that `fill` writes (into the next message, so it is never copied).

        `timeout` is the model's (the caller enforces it): what tells a slow worker from a hung one."""
        if self.closed():
            raise StreamClosed("the worker's call stream is closed")
        request = self._batch.requests.add()
        try:
            fill(request)
        except BaseException:
            del self._batch.requests[-1]
            raise
        request.call_id = call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        answer = self._waiting[call_id] = loop.create_future()
        if timeout is not None:
            self._hang_checks[call_id] = loop.call_later(timeout + HUNG_GRACE, self._on_hung)
        self._queued.set()
        try:
            return await answer
        except asyncio.CancelledError:
            if call_id in self._waiting:  # the caller gave up before the answer came: tell the worker
                self._batch.cancelled.append(call_id)
                self._queued.set()
            raise

    def closed(self) -> bool:
        """Whether the stream has ended (the worker went away, or `close`)."""
        return self._reader.done() or self._writer.done()

    def overdue(self) -> bool:
        """Whether some call is still unanswered past its model's timeout (the worker may be hung)."""
        now = asyncio.get_running_loop().time()
        return any(check.when() - HUNG_GRACE <= now for check in self._hang_checks.values())

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
                    if check := self._hang_checks.pop(response.call_id, None):
                        check.cancel()
                    answer = self._waiting.pop(response.call_id, None)
                    if answer is not None and not answer.done():
                        answer.set_result(response)
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            self._fail_waiting("the worker's call stream ended")
            if self._on_closed is not None:
                self._on_closed()

    def _fail_waiting(self, reason: str) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(StreamClosed(reason))
        self._waiting.clear()
        for check in self._hang_checks.values():
            check.cancel()
        self._hang_checks.clear()
