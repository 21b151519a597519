"""`LLModel`: a chat LLM as a streaming model, its provider picked by the model artifact's URI.

Its predict yields text chunks as they are generated and then one final
``{"answer": ..., "usage": {...}}``; a unary call gets that final result. Providers:

- a GGUF file (and the embedded default, SmolLM2-135M-Instruct, when there is no artifact): llama.cpp;
- a transformers model directory: transformers (GPUs, or any model llama.cpp does not take);
- ``openai://<model>``: an OpenAI-compatible API; ``mock://``: answers without a model (for tests).

The ``provider`` parameter (``"llama.cpp"`` or ``"transformers"``) overrides the choice; a GGUF file
given to transformers is converted once into a model directory. Both local providers batch
concurrent requests continuously (`scheduler.py`): a request joins the running batch at the next
decode step and leaves it the moment it ends. A prompt with no model behind it is refused when the
graph starts, unless a subclass overrides predict.

As in MLRun, predict receives the request already built: ``messages=`` (the prompt rendered from the
body, or the body's own messages) and ``invocation_config=``, so a subclass may override it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from ...errors import InvalidArgument
from ..artifacts import LLMPromptArtifact, ModelArtifact
from ..base import Model

OPENAI_SCHEME = "openai://"
MOCK_SCHEME = "mock://"
LLAMA_CPP = "llama.cpp"
TRANSFORMERS = "transformers"


class LLModel(Model):
    """A chat LLM. Put it behind shared-model proxies to serve several prompts with one copy.

    Parameters: ``max_tokens``, ``temperature``, ``top_p``, ``stop`` (defaults for every call, under
    the prompt's invocation_config); ``provider``; ``max_batch_size`` (sequences decoded together,
    8); ``num_threads`` (1); ``n_ctx`` (tokens per request, 2048); ``device`` (transformers);
    ``base_url`` and ``api_key`` for OpenAI (else OPENAI_BASE_URL / OPENAI_API_KEY); ``input_path``
    (MLRun's: where in the body the prompt's fields are).

    Its `predict_async` serves every mechanism (``prefer_async``), so concurrent streams share one
    worker; a subclass that overrides only `predict` (MLRun's way) is called through `predict`.
    """

    prefer_async = True
    default_max_batch_size = 8

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "predict" in cls.__dict__ and "predict_async" not in cls.__dict__:
            cls.prefer_async = False

    def __init__(self, name: str | None = None, model_artifact: ModelArtifact | None = None, **parameters: Any):
        super().__init__(name, model_artifact, **parameters)
        self.input_keys = tuple(key for key in (parameters.get("input_path") or "").split(".") if key)

    @classmethod
    def cannot_serve(cls, name: str, execution_mechanism: str, model_artifact: ModelArtifact | None) -> str | None:
        """Also MLRun's refusal: a prompt with no model behind it, and the predict that needs one not overridden."""
        why = super().cannot_serve(name, execution_mechanism, model_artifact)
        if why or not (isinstance(model_artifact, LLMPromptArtifact) and model_artifact.model_artifact is None):
            return why
        needed = "predict_async" if execution_mechanism == "asyncio" or cls.prefer_async else "predict"
        if getattr(cls, needed) is getattr(LLModel, needed):
            return (
                f"Model provider could not be determined for model '{name}', and the {needed} function "
                "was not overridden."
            )
        return None

    def load(self) -> None:
        if isinstance(self.model_artifact, LLMPromptArtifact) and self.model_artifact.model_artifact is None:
            return  # a subclass's own predict answers (see cannot_serve)
        uri = _weights(self.model_artifact)
        if uri and uri.startswith(OPENAI_SCHEME):
            from .openai_provider import OpenAIProvider

            self.provider: Any = OpenAIProvider(uri.removeprefix(OPENAI_SCHEME), self.parameters)
        elif uri and uri.startswith(MOCK_SCHEME):
            from .mock_provider import MockProvider

            self.provider = MockProvider()
        elif self._local_provider(uri) == TRANSFORMERS:
            from .providers import TransformersProvider
            from .weights import model_directory

            self.provider = TransformersProvider(model_directory(uri), self.parameters)
        else:
            from .providers import LlamaCppProvider
            from .weights import embedded_gguf

            self.provider = LlamaCppProvider(uri or str(embedded_gguf()), self.parameters)

    def _local_provider(self, uri: str | None) -> str:
        """llama.cpp for GGUF files (and the embedded default), transformers for model directories,
        unless the ``provider`` parameter says which."""
        chosen = self.parameters.get("provider")
        if chosen is None:
            return LLAMA_CPP if uri is None or uri.endswith(".gguf") else TRANSFORMERS
        if chosen in (LLAMA_CPP, "llamacpp", TRANSFORMERS):
            return TRANSFORMERS if chosen == TRANSFORMERS else LLAMA_CPP
        raise InvalidArgument(f"model '{self.name}': unknown provider {chosen!r} (use 'llama.cpp' or 'transformers')")

    def predict(
        self,
        body: Any,
        messages: list[dict[str, str]] | None = None,
        invocation_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Iterator[Any]:
        yield from self.provider.stream(messages, invocation_config or {})

    async def predict_async(
        self,
        body: Any,
        messages: list[dict[str, str]] | None = None,
        invocation_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        async for chunk in self.provider.astream(messages, invocation_config or {}):
            yield chunk

    def join_chunks(self, chunks: list[Any]) -> Any:
        """A unary call's result: the final ``{"answer", "usage"}`` after the text chunks."""
        return chunks[-1]

    def predict_arguments(self, body: Any, model_artifact: ModelArtifact | None) -> dict[str, Any]:
        """The request for this call: the proxy's prompt (else the model's own) rendered from the body."""
        prompt = model_artifact if isinstance(model_artifact, LLMPromptArtifact) else self.model_artifact
        prompt = prompt if isinstance(prompt, LLMPromptArtifact) else None
        messages, config = self.enrich_prompt(body, self.name, prompt)
        return {"messages": messages, "invocation_config": config, "llm_prompt_artifact": prompt}

    def enrich_prompt(
        self, body: Any, origin_name: str, llm_prompt_artifact: LLMPromptArtifact | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """MLRun's prompt building: ``(messages, invocation_config)`` for the body (at ``input_path``);
        a list there is a batch, and gives a list of message lists."""
        data = body
        for key in self.input_keys:
            if not isinstance(data, dict) or key not in data:
                raise InvalidArgument(
                    f"model '{origin_name}': input path '{'.'.join(self.input_keys)}' is not in the body"
                )
            data = data[key]
        config = {key: self.parameters[key] for key in ("max_tokens", "temperature", "top_p") if key in self.parameters}
        if llm_prompt_artifact is not None:
            config = {**config, **llm_prompt_artifact.invocation_config}
        if isinstance(data, list):
            return [self._messages(item, llm_prompt_artifact) for item in data], config
        return self._messages(data, llm_prompt_artifact), config

    @staticmethod
    def _messages(body: Any, prompt: LLMPromptArtifact | None) -> list[dict[str, str]]:
        if prompt is not None and prompt.prompt_template:
            return prompt.render(body)
        if isinstance(body, dict) and isinstance(body.get("messages"), list):
            return body["messages"]
        if isinstance(body, dict) and isinstance(body.get("question") or body.get("prompt"), str):
            return [{"role": "user", "content": body.get("question") or body["prompt"]}]
        if isinstance(body, str):
            return [{"role": "user", "content": body}]
        raise InvalidArgument(
            "an LLModel without a prompt template needs 'messages', 'question' or 'prompt' in the body"
        )


def _weights(artifact: ModelArtifact | None) -> str | None:
    if isinstance(artifact, LLMPromptArtifact):
        artifact = artifact.model_artifact
    return artifact.uri if artifact is not None else None
