"""The OpenAI provider of `LLModel`: any OpenAI-compatible chat API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any


class OpenAIProvider:
    """An OpenAI-compatible chat API; usage is copied whole from the response."""

    def __init__(self, model: str, parameters: dict[str, Any]):
        from openai import AsyncOpenAI, OpenAI

        options = {key: parameters[key] for key in ("base_url", "api_key") if parameters.get(key)}
        self.model = model
        self.client = AsyncOpenAI(**options)
        self.sync_client = OpenAI(**options)

    def _arguments(self, messages: list[dict[str, str]], config: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **config,
        }

    async def astream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> AsyncIterator[Any]:
        answer, usage = [], None
        stream = await self.client.chat.completions.create(**self._arguments(messages, config))
        async for chunk in stream:
            for delta in _deltas(chunk):
                answer.append(delta)
                yield delta
            usage = chunk.usage.model_dump() if chunk.usage else usage
        yield {"answer": "".join(answer), "usage": usage}

    def stream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> Iterator[Any]:
        answer, usage = [], None
        for chunk in self.sync_client.chat.completions.create(**self._arguments(messages, config)):
            for delta in _deltas(chunk):
                answer.append(delta)
                yield delta
            usage = chunk.usage.model_dump() if chunk.usage else usage
        yield {"answer": "".join(answer), "usage": usage}


def _deltas(chunk: Any) -> Iterator[str]:
    for choice in chunk.choices or ():
        if choice.delta and choice.delta.content:
            yield choice.delta.content
