"""The llama.cpp provider on the embedded GGUF: llama.cpp's own greedy text, exact usage, continuous batching
across streams, cancel, errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from servegraph.errors import InvalidArgument
from servegraph.models.llm.providers import LlamaCppProvider
from servegraph.models.llm.weights import embedded_gguf

GGUF = embedded_gguf()
QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about rain.",
    "What is 2+2?",
    "Explain what a bond yield is in one sentence.",
    "Give me a tip for learning chess.",
]


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def provider():
    provider = LlamaCppProvider(str(GGUF), {"max_batch_size": 4, "n_ctx": 1024})
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def reference():
    """llama-cpp-python's own high-level API, same thread count, greedy."""
    from llama_cpp import Llama

    llama = Llama(str(GGUF), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    yield llama
    llama.close()


def solo(provider: LlamaCppProvider, question: str, max_tokens: int, **config) -> dict:
    chunks = list(provider.stream(chat(question), {"max_tokens": max_tokens, **config}))
    assert all(isinstance(c, str) for c in chunks[:-1]) and "".join(chunks[:-1]) == chunks[-1]["answer"]
    return chunks[-1]


def test_greedy_text_and_usage_equal_llama_cpp_create_chat_completion(provider, reference):
    for question in QUESTIONS[:4]:
        ours = solo(provider, question, 48)
        theirs = reference.create_chat_completion(chat(question), temperature=0.0, max_tokens=48)
        assert ours["answer"] == theirs["choices"][0]["message"]["content"]
        assert ours["usage"] == theirs["usage"]


def test_prompt_tokens_are_llama_cpp_tokens_of_the_gguf_template(provider, reference):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = reference.metadata["tokenizer.chat_template"]
    prompt = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<|im_start|>")(messages=chat("Hi")).prompt
    tokens = reference.tokenize(prompt.encode(), add_bos=False, special=True)
    result = solo(provider, "Hi", 5)
    assert result["usage"]["prompt_tokens"] == len(tokens)
    assert result["usage"]["total_tokens"] == len(tokens) + result["usage"]["completion_tokens"]


def test_staggered_arrivals_join_the_batch_and_keep_their_solo_text(provider):
    alone = [solo(provider, q, 40) for q in QUESTIONS]

    async def one(i: int, question: str) -> dict:
        await asyncio.sleep(i * 0.03)  # later requests join while earlier ones decode (4 slots, 6 requests)
        return [c async for c in provider.astream(chat(question), {"max_tokens": 40})][-1]

    async def main():
        return await asyncio.gather(*(one(i, q) for i, q in enumerate(QUESTIONS)))

    # Full text, not a prefix: llama.cpp's CPU kernels compute each token's row the same way
    # whatever else is in the batch for this model/quantization (checked here on every run).
    assert asyncio.run(main()) == alone


def test_cancelling_one_stream_frees_it_within_a_step_while_others_finish(provider):
    expected = [solo(provider, q, 40) for q in QUESTIONS[:3]]
    scheduler = provider.scheduler
    requests = [provider.submit(chat(q), {"max_tokens": 40}) for q in QUESTIONS[:3]]
    victim = provider.submit(chat(QUESTIONS[3]), {"max_tokens": 10_000})
    stream = iter(victim)
    next(stream)
    tokens_at_cancel = victim.completion_tokens
    stream.close()
    deadline = time.time() + 5
    while victim.finish_reason is None and time.time() < deadline:
        time.sleep(0.001)
    assert victim.finish_reason == "cancelled"
    assert victim.completion_tokens - tokens_at_cancel <= 2
    assert victim._slot not in scheduler._running
    texts = ["".join(r) for r in requests]
    assert [{"answer": t, "usage": r.usage} for t, r in zip(texts, requests, strict=True)] == expected


def test_stop_strings_and_max_tokens(provider):
    full = solo(provider, QUESTIONS[4], 40)["answer"]
    word = full.split()[3]
    stopped = solo(provider, QUESTIONS[4], 40, stop=[word, "zzz-never"])
    assert stopped["answer"] == full[: full.find(word)]
    assert solo(provider, QUESTIONS[4], 3)["usage"]["completion_tokens"] == 3


def test_sampling_with_a_seed_repeats(provider):
    config = {"temperature": 0.8, "top_p": 0.9, "seed": 7}
    assert solo(provider, QUESTIONS[2], 20, **config) == solo(provider, QUESTIONS[2], 20, **config)


def test_missing_or_non_gguf_file_errors_naming_it(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(InvalidArgument, match=r"nope\.gguf"):
        LlamaCppProvider(str(missing), {})
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    with pytest.raises(InvalidArgument, match=r"fake\.gguf"):
        LlamaCppProvider(str(fake), {})
