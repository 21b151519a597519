"""The transformers provider batches continuously: each request gets exactly the text it gets alone.

On the tiny random Llama in float32 (tests/tiny_llm.py), with transformers' own greedy `generate` as
the reference for what one request alone must produce.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from tiny_llm import build_tiny_llm
from transformers import AutoModelForCausalLM, AutoTokenizer

from servegraph.models.llm.providers import TransformersProvider

QUESTIONS = [
    "The quick brown fox",
    "Markets rose as investors weighed earnings and",
    "Players trained",
    "Interest rates and inflation shape bond yields, so what",
    "The home team won the match after a late goal",
]


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny_llm(tmp_path_factory.mktemp("tiny")))


def generate(directory: str, question: str, max_tokens: int) -> tuple[str, int, int]:
    """transformers' own greedy decoding of one request: (text, prompt tokens, completion tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    prompt = tokenizer.apply_chat_template(
        chat(question), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        output = model.generate(**prompt, max_new_tokens=max_tokens, do_sample=False)
    new = output[0, prompt["input_ids"].shape[1] :].tolist()
    if new and new[-1] == tokenizer.eos_token_id:
        new = new[:-1]
    return tokenizer.decode(new, skip_special_tokens=True), prompt["input_ids"].shape[1], len(new)


def staggered(provider: TransformersProvider, questions: list[str], max_tokens: int, gap: float) -> list[dict]:
    """Start each stream `gap` seconds after the previous one, so later ones join a running batch."""

    async def one(i: int, question: str) -> dict:
        await asyncio.sleep(i * gap)
        chunks = [chunk async for chunk in provider.astream(chat(question), {"max_tokens": max_tokens})]
        assert "".join(chunks[:-1]) == chunks[-1]["answer"]
        return chunks[-1]

    async def main() -> list[dict]:
        return await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))

    return asyncio.run(main())


def test_staggered_requests_join_the_batch_and_get_their_solo_greedy_text(tiny):
    provider = TransformersProvider(tiny, {"max_batch_size": 3})
    try:
        batched = staggered(provider, QUESTIONS, 40, 0.01)
    finally:
        provider.close()
    for result, question in zip(batched, QUESTIONS, strict=True):
        text, prompt_tokens, completion_tokens = generate(tiny, question, 40)
        assert result["answer"] == text
        assert result["usage"] == {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }


def test_cancelling_one_stream_leaves_the_others_intact(tiny):
    provider = TransformersProvider(tiny, {"max_batch_size": 4})
    try:

        async def main() -> dict:
            async def endless() -> None:
                async for _ in provider.astream(chat(QUESTIONS[1]), {"max_tokens": 10_000}):
                    pass

            cancelled = asyncio.create_task(endless())
            kept = asyncio.create_task(collect())
            await asyncio.sleep(0.05)
            cancelled.cancel()
            return await kept

        async def collect() -> dict:
            return [chunk async for chunk in provider.astream(chat(QUESTIONS[0]), {"max_tokens": 60})][-1]

        assert asyncio.run(main())["answer"] == generate(tiny, QUESTIONS[0], 60)[0]
        deadline = time.monotonic() + 2
        while provider.scheduler._running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not provider.scheduler._running, "the cancelled stream kept its slot"
    finally:
        provider.close()


def test_a_reused_prompt_prefix_gives_the_same_answer_as_a_cold_start(tiny):
    """A prompt sharing a cached prefix prefills only the rest (attending to the cached keys)."""
    provider = TransformersProvider(tiny, {"max_batch_size": 1})
    try:
        questions = (QUESTIONS[1], QUESTIONS[1] + " today", QUESTIONS[1])
        results = [list(provider.stream(chat(q), {"max_tokens": 30}))[-1]["answer"] for q in questions]
    finally:
        provider.close()
    assert results == [generate(tiny, q, 30)[0] for q in questions]
