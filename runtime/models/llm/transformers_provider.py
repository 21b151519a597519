"""The transformers provider of `LLModel`: a local causal LM decoded token by token on a KV cache."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ...aio import ChunkPump
from .weights import model_directory

logger = logging.getLogger("servegraph.llm")

DEFAULT_MAX_TOKENS = 256


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
        async for chunk in ChunkPump(self.stream(messages, config), coalesce=True):
            yield chunk


def _sample(torch: Any, logits: Any, temperature: float, top_p: float) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1))
