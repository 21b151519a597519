"""SmolLM2 streams, 1 / 4 / 8 at once: servegraph's LLModel against each engine's own API, same run.

llama.cpp (the embedded GGUF, one thread): `Llama.create_chat_completion` serving the streams one
after another (one `Llama` object decodes one request at a time), `LlamaCppProvider` in-process
(continuous batching), and the same served through router + worker + gRPC. transformers (the same
model converted, one torch thread): `model.generate` in-process for one stream, and the transformers
provider served, batching 1 / 4 / 8 streams. Every stream asks its own question for `TOKENS` greedy
tokens and all of a round arrive at once; first-token times are counted from that moment, so a
serial engine's include the queue. Each case runs `BENCH_LLM_ROUNDS` (2) rounds after a warm-up and
reports its best.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

TOKENS = int(os.environ.get("BENCH_LLM_TOKENS", "64"))
ROUNDS = int(os.environ.get("BENCH_LLM_ROUNDS", "2"))
TOPICS = ["a dragon", "the sea", "a robot", "a city at night", "an old clock", "a lost key", "winter", "a violin"]
_asked = itertools.count()


def chats(n: int) -> list[list[dict[str, str]]]:
    """n new questions: the same instruction on different topics, numbered so no prompt repeats."""
    return [
        [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]} (#{next(_asked)})."}]
        for i in range(n)
    ]


@dataclass
class Run:
    tokens: int
    seconds: float
    firsts: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def line(self, name: str, streams: int) -> str:
        firsts = sorted(self.firsts)
        return (
            f"{name:<38} x{streams}: {self.rate:6.1f} tokens/s   first token median"
            f" {firsts[len(firsts) // 2] * 1e3:6.0f} ms, worst {firsts[-1] * 1e3:6.0f} ms"
        )


def serial(serve: Callable[[list[dict[str, str]]], Iterator[str | dict]], streams: int) -> Run:
    """Streams served one after another; `serve` yields a chat's text deltas, then ``{"usage": ...}``."""
    start, tokens, firsts = time.perf_counter(), 0, []
    for chat in chats(streams):
        first = None
        for chunk in serve(chat):
            if isinstance(chunk, dict):
                tokens += chunk["usage"]["completion_tokens"]
            else:
                first = first or time.perf_counter() - start
        firsts.append(first or time.perf_counter() - start)
    return Run(tokens, time.perf_counter() - start, firsts)


def concurrent(astream: Callable[[list[dict[str, str]]], object], streams: int) -> Run:
    async def one(chat: list[dict[str, str]], start: float) -> tuple[int, float]:
        first, usage = None, {}
        async for chunk in astream(chat):  # type: ignore[attr-defined]
            if isinstance(chunk, dict):
                usage = chunk["usage"]
            else:
                first = first or time.perf_counter() - start
        return usage["completion_tokens"], first or time.perf_counter() - start

    async def all_at_once() -> Run:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(chat, start) for chat in chats(streams)))
        return Run(sum(tokens for tokens, _ in results), time.perf_counter() - start, [f for _, f in results])

    return asyncio.run(all_at_once())


def best(run: Callable[[int], Run], streams: int) -> Run:
    run(streams)  # warm-up: every slot of a batching engine has served (and cached the chat template)
    return max((run(streams) for _ in range(ROUNDS)), key=lambda measured: measured.rate)


def served_stream(address: str) -> Callable[[list[dict[str, str]]], object]:
    from servegraph.clients import AsyncClient

    async def astream(chat: list[dict[str, str]]):  # one channel per stream, as separate callers have
        async with AsyncClient(address) as client:
            async for chunk in client.stream({"messages": chat}):
                yield chunk

    return astream


def llama_cpp() -> dict[str, dict[int, Run]]:
    from llama_cpp import Llama

    from servegraph.models.llm.providers import LlamaCppProvider
    from servegraph.models.llm.weights import embedded_gguf
    from servegraph.serving.launcher import launch

    config = {"max_tokens": TOKENS, "temperature": 0.0}
    llama = Llama(str(embedded_gguf()), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)

    def own(chat: list[dict[str, str]]) -> Iterator[str | dict]:
        completion_tokens = 0
        for chunk in llama.create_chat_completion(chat, stream=True, **config):
            if text := chunk["choices"][0]["delta"].get("content"):
                completion_tokens += 1  # a streamed chunk is a token
                yield text
        yield {"usage": {"completion_tokens": completion_tokens}}

    results: dict[str, dict[int, Run]] = {"llama.cpp create_chat_completion": {}, "LlamaCppProvider in-process": {}}
    for streams in (1, 4, 8):
        results["llama.cpp create_chat_completion"][streams] = best(lambda n: serial(own, n), streams)
    llama.close()
    provider = LlamaCppProvider(str(embedded_gguf()), {"num_threads": 1})
    for streams in (1, 4, 8):
        results["LlamaCppProvider in-process"][streams] = best(
            lambda n: concurrent(lambda chat: provider.astream(chat, config), n), streams
        )
    provider.close()
    with launch("benchmarks.served:smollm2", timeout=600) as router:
        astream = served_stream(router.address)
        results["served: router + worker"] = {n: best(lambda k: concurrent(astream, k), n) for n in (1, 4, 8)}
    return results


def transformers() -> dict[str, dict[int, Run]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from servegraph.models.llm.weights import model_directory
    from servegraph.serving.launcher import launch

    torch.set_num_threads(1)
    directory = model_directory(None)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()

    def generate(_: int) -> Run:
        """One stream: the time to a 1-token `generate`, and the rate of a full one."""
        inputs = tokenizer.apply_chat_template(
            chats(1)[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            started = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - started
            started = time.perf_counter()
            output = model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
        return Run(output.shape[1] - inputs["input_ids"].shape[1], time.perf_counter() - started, [first])

    results = {"generate in-process, one at a time": {1: best(generate, 1)}}
    with launch("benchmarks.served:smollm2_transformers", timeout=600) as router:
        astream = served_stream(router.address)
        results["served: transformers, batched"] = {n: best(lambda k: concurrent(astream, k), n) for n in (1, 4, 8)}
    return results


def main() -> None:
    print(f"== SmolLM2-135M, {TOKENS} tokens a stream, all streams arriving at once (best of {ROUNDS} rounds) ==")
    llama = llama_cpp()
    for name, runs in llama.items():
        for streams, run in runs.items():
            print(run.line(name, streams), flush=True)
    own, served = llama["llama.cpp create_chat_completion"], llama["served: router + worker"]
    print(
        f"  served / llama.cpp, one stream: {served[1].rate / own[1].rate:.2f}x tokens/s (target >= 0.9x),"
        f" first token {(served[1].firsts[0] - own[1].firsts[0]) * 1e3:+.0f} ms (target <= +20 ms)"
    )
    print(
        f"  served, 8 streams / 1: {served[8].rate / served[1].rate:.2f}x tokens/s (target >= 2x),"
        f" worst first token {max(served[8].firsts):.2f} s (target <= 0.5 s)"
    )
    hf = transformers()
    for name, runs in hf.items():
        for streams, run in runs.items():
            print(run.line(name, streams), flush=True)
    alone, batched = hf["generate in-process, one at a time"][1], hf["served: transformers, batched"]
    print(
        f"  served transformers, 8 streams / 1: {batched[8].rate / batched[1].rate:.2f}x tokens/s (target >= 2.5x),"
        f" worst first token {max(batched[8].firsts):.2f} s (target <= 2 s);"
        f" one stream / generate {batched[1].rate / alone.rate:.2f}x (target >= 0.95x)"
    )


if __name__ == "__main__":
    main()
