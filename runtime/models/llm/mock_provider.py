"""The ``mock://`` provider of `LLModel`: no model, a fixed answer, for tests of graphs around an LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

MOCK_ANSWER = "You are using a mock model provider, no actual inference is performed."


class MockProvider:
    """Answers every request with `MOCK_ANSWER` and zero usage, as MLRun's mock provider does."""

    def stream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> Iterator[Any]:
        yield MOCK_ANSWER
        yield {"answer": MOCK_ANSWER, "usage": {"prompt_tokens": 0, "completion_tokens": 0}}

    async def astream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> AsyncIterator[Any]:
        for chunk in self.stream(messages, config):
            yield chunk
