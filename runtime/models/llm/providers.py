"""LLModel's local providers: llama.cpp (GGUF) and transformers, both on the one `Scheduler`.

A provider's `stream` / `astream` yields the answer's text deltas, then exactly one
``{"answer": text, "usage": {...}}``. Concurrent calls decode together (continuous batching);
closing the iterator, or cancelling the task consuming `astream`, cancels the request within a step.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ...errors import InvalidArgument
from .scheduler import Backend, Request, SamplingParams, Scheduler


class LocalProvider:
    """Streams chat completions of one backend through a scheduler it owns."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.scheduler = Scheduler(backend)

    def submit(self, messages: list[dict[str, str]], config: dict[str, Any]) -> Request:
        """Tokenize and queue one chat request (its text comes from iterating the `Request`)."""
        if not messages:
            raise InvalidArgument("the chat has no messages")
        return self.scheduler.submit(self.backend.encode_chat(messages), SamplingParams.from_config(config))

    def stream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> Iterator[Any]:
        request = self.submit(messages, config)
        try:
            yield from request
        finally:
            request.cancel()  # a no-op once finished
        yield {"answer": request.text, "usage": request.usage}

    async def astream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> AsyncIterator[Any]:
        request = self.submit(messages, config)
        try:
            async for chunk in request:
                yield chunk
        finally:
            request.cancel()
        yield {"answer": request.text, "usage": request.usage}

    def close(self) -> None:
        """Stop the scheduler thread (requests still running end as cancelled), then free the model."""
        self.scheduler.close()
        self.backend.close()


def _int(parameters: dict[str, Any], key: str, default: int) -> int:
    try:
        value = int(parameters.get(key, default))
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"LLModel parameter {key!r} must be an integer") from error
    if value < 1:
        raise InvalidArgument(f"LLModel parameter {key!r} must be >= 1")
    return value


class LlamaCppProvider(LocalProvider):
    """A GGUF model on llama.cpp. Parameters: num_threads (1: for one sequence's step), num_threads_batch
    (for a step of several tokens: a prompt, or many streams; by default every core, as llama.cpp's
    own default), max_batch_size (8), n_ctx (2048, per request)."""

    def __init__(self, path: str, parameters: dict[str, Any]):
        from .llamacpp import LlamaCppBackend

        super().__init__(
            LlamaCppBackend(
                path,
                n_ctx=_int(parameters, "n_ctx", 2048),
                n_threads=_int(parameters, "num_threads", 1),
                n_threads_batch=_int(parameters, "num_threads_batch", os.cpu_count() or 1),
                max_batch_size=_int(parameters, "max_batch_size", 8),
            )
        )


class TransformersProvider(LocalProvider):
    """A transformers model directory. Parameters: num_threads (1, torch's, process-wide),
    max_batch_size (8), n_ctx (2048, per request), device ("cpu", "cuda", "cuda:1", ...)."""

    def __init__(self, directory: str, parameters: dict[str, Any]):
        import torch

        from .transformers_backend import TransformersBackend

        torch.set_num_threads(_int(parameters, "num_threads", 1))
        super().__init__(
            TransformersBackend(
                directory,
                max_batch_size=_int(parameters, "max_batch_size", 8),
                device=str(parameters.get("device", "cpu")),
                n_ctx=_int(parameters, "n_ctx", 2048),
            )
        )
