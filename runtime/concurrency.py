"""Serving every request of a gRPC request stream at once, answers interleaved as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


async def answer_concurrently(
    requests: AsyncIterator[Request], answer: Callable[[Request], AsyncIterator[Answer]]
) -> AsyncIterator[list[Answer]]:
    """Start `answer` for each request as it arrives; yield what they produce, in the order produced.

    Items come in lists of those that were ready together, so a caller that can send several in one
    message does (one item a list when the answers come one at a time). Ends when the requests end
    and every answer has finished; closing it cancels what still runs. `answer` must not raise:
    failures are answers too (V2 streams and worker calls report them in-band). An exception from
    `requests` (a message that does not parse) is raised here, once the answers ready by then are out.
    """
    ready: list[Answer] = []
    wake = asyncio.Event()
    running: set[asyncio.Task[None]] = set()

    async def forward(request: Request) -> None:
        async for item in answer(request):
            ready.append(item)
            wake.set()

    async def read() -> None:
        try:
            async for request in requests:
                task = asyncio.create_task(forward(request))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        finally:  # also when `requests` raises: the loop below must see the reader done
            wake.set()

    reader = asyncio.create_task(read())
    try:
        while True:
            await wake.wait()
            wake.clear()
            if ready:
                batch = ready.copy()
                ready.clear()
                yield batch
            if reader.done() and not ready:
                break
        await reader  # raises what reading `requests` raised
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
