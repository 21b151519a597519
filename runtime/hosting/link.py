"""The router's link to one worker, wherever it runs: what pools, handles and metrics use.

A `WorkerProcess` is a worker the router spawned and supervises on a Unix socket; a `RemoteWorker` is
a replica that someone else runs on another host, reached over TCP. Both keep the same state here
(the gRPC stub and the call stream while connected, whether it may take calls, its calls in flight),
so `WorkerHandle` and `WorkerPool` call either the same way: the same streams, cancellations and
failures (a call in flight when the link is lost fails with UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from ..v1 import worker_pb2_grpc
from .calls import CallStream


class WorkerLink:
    def __init__(self, name: str):
        self.name = name
        self.stub: worker_pb2_grpc.WorkerStub | None = None
        self.calls: CallStream | None = None
        self.in_flight = 0
        self.restarts = 0
        """Times it came back after being lost (a restart, or a replica reconnected)."""
        self.up = False
        """Set on the event loop as it comes and goes: what metrics read, from any thread."""
        self.ready = asyncio.Event()
        """Set while it may take new calls."""
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        """Return once it takes calls; GraphError if it cannot."""
        raise NotImplementedError

    async def stop(self, grace: float = 5.0) -> None:
        raise NotImplementedError

    async def wait_ready(self, timeout: float) -> worker_pb2_grpc.WorkerStub:
        """The stub of a worker that takes calls; UNAVAILABLE if there is none within `timeout`."""
        raise NotImplementedError

    def is_down(self) -> bool:
        return not self.ready.is_set()

    def is_hung(self) -> bool:
        """Whether it holds a call past its model's timeout: not ready, and restarted unless it answers soon."""
        return self.calls is not None and self.calls.overdue()

    def lost(self) -> str:
        """What happened to a call in flight when the link was lost (for its UNAVAILABLE)."""
        raise NotImplementedError

    def _open(
        self, channel: grpc.aio.Channel, on_hung: Callable[[], None], on_closed: Callable[[], None] | None = None
    ) -> None:
        """Take calls over `channel` from now on."""
        self._channel = channel
        self.stub = worker_pb2_grpc.WorkerStub(channel)
        self.calls = CallStream(self.stub, on_hung, on_closed)
        self.ready.set()
        self.up = True

    async def _close_channel(self) -> None:
        """Close the call stream and the channel: the calls still in flight on them fail."""
        if self.calls is not None:
            await self.calls.close()
            self.calls = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self.stub = None


MESSAGE_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
"""Bodies between router and worker are bounded by the router's own limits, not again on this hop."""
