"""Serving every request of a gRPC request stream at once, answers interleaved as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

_DONE = object()


async def answer_concurrently(
    requests: AsyncIterator[Request], answer: Callable[[Request], AsyncIterator[Answer]]
) -> AsyncIterator[Answer]:
    """Start `answer` for each request as it arrives; yield what they produce, in the order produced.

    Ends when the requests end and every answer has finished; closing it cancels what still runs.
    `answer` must not raise: failures are answers too (V2 streams and worker calls report them in-band).
    """
    answers: asyncio.Queue[object] = asyncio.Queue()
    running: set[asyncio.Task[None]] = set()

    async def forward(request: Request) -> None:
        async for item in answer(request):
            answers.put_nowait(item)

    async def read() -> None:
        async for request in requests:
            task = asyncio.create_task(forward(request))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
        answers.put_nowait(_DONE)

    reader = asyncio.create_task(read())
    try:
        while (item := await answers.get()) is not _DONE:
            yield item  # type: ignore[misc]
        await reader
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
