"""`LLModel`: a chat LLM as a streaming model, its provider picked by the model artifact's URI.

Its predict yields text chunks as they are generated and then one final
``{"answer": ..., "usage": {...}}``; a unary call gets that final result. ``openai://<model>`` talks
to an OpenAI-compatible API (AsyncOpenAI on the asyncio mechanism); anything else is a local
transformers model (a directory or a GGUF file), run where the model is hosted. No URI means the
embedded default, SmolLM2-135M-Instruct.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from ...errors import InvalidArgument
from ..artifacts import LLMPromptArtifact, ModelArtifact
from ..base import Model

OPENAI_SCHEME = "openai://"


class LLModel(Model):
    """A chat LLM. Put it behind shared-model proxies to serve several prompts with one copy.

    Parameters: ``max_tokens``, ``temperature``, ``top_p`` (defaults for every call, under the
    prompt's invocation_config); ``num_threads`` (torch threads, 1 by default); ``device``;
    ``base_url`` and ``api_key`` for OpenAI (else OPENAI_BASE_URL / OPENAI_API_KEY).
    """

    def load(self) -> None:
        uri = _weights(self.model_artifact)
        if uri and uri.startswith(OPENAI_SCHEME):
            from .openai_provider import OpenAIProvider

            self.provider: Any = OpenAIProvider(uri.removeprefix(OPENAI_SCHEME), self.parameters)
        else:
            from .transformers_provider import TransformersProvider

            self.provider = TransformersProvider(uri, self.parameters)

    def predict(
        self, body: Any, endpoint: str | None = None, model_artifact: ModelArtifact | None = None
    ) -> Iterator[Any]:
        messages, config = self._request(body, model_artifact)
        yield from self.provider.stream(messages, config)

    async def predict_async(
        self, body: Any, endpoint: str | None = None, model_artifact: ModelArtifact | None = None
    ) -> AsyncIterator[Any]:
        messages, config = self._request(body, model_artifact)
        async for chunk in self.provider.astream(messages, config):
            yield chunk

    def join_chunks(self, chunks: list[Any]) -> Any:
        """A unary call's result: the final ``{"answer", "usage"}`` after the text chunks."""
        return chunks[-1]

    def _request(self, body: Any, artifact: ModelArtifact | None) -> tuple[list[dict[str, str]], dict[str, Any]]:
        prompt = artifact if isinstance(artifact, LLMPromptArtifact) else self.model_artifact
        config = {key: self.parameters[key] for key in ("max_tokens", "temperature", "top_p") if key in self.parameters}
        if isinstance(prompt, LLMPromptArtifact) and prompt.prompt_template:
            return prompt.render(body), {**config, **prompt.invocation_config}
        if isinstance(body, dict) and isinstance(body.get("messages"), list):
            return body["messages"], config
        if isinstance(body, dict) and isinstance(body.get("question") or body.get("prompt"), str):
            return [{"role": "user", "content": body.get("question") or body["prompt"]}], config
        if isinstance(body, str):
            return [{"role": "user", "content": body}], config
        raise InvalidArgument(
            "an LLModel without a prompt template needs 'messages', 'question' or 'prompt' in the body"
        )


def _weights(artifact: ModelArtifact | None) -> str | None:
    if isinstance(artifact, LLMPromptArtifact):
        artifact = artifact.model_artifact
    return artifact.uri if artifact is not None else None
