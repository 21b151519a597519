"""SmolLM2 token streaming through router + worker + gRPC against `model.generate` in-process.

Both generate the same number of tokens from the same prompt with one torch thread. Their rounds
alternate (in-process, served, in-process, ...), never overlapping, so both sides see the machine in
the same state: on these shared 2-core machines speed drifts by a quarter within a minute. Each side
reports its best round. Time to first token in-process is a 1-token `generate`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

QUESTION = "Explain in a few sentences why diversification lowers the risk of a portfolio."
TOKENS = int(os.environ.get("BENCH_LLM_TOKENS", "64"))
ROUNDS = 5

Round = Callable[[], tuple[float, float]]
"""One generation: (tokens/s, seconds to the first token)."""


def in_process() -> Round:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from servegraph.models.llm.weights import model_directory

    torch.set_num_threads(1)
    directory = model_directory(None)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_length = inputs["input_ids"].shape[1]

    def one_round() -> tuple[float, float]:
        with torch.inference_mode():
            started = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - started
            started = time.perf_counter()
            output = model.generate(**inputs, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
            return (output.shape[1] - prompt_length) / (time.perf_counter() - started), first

    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return one_round


@contextlib.contextmanager
def served() -> Iterator[Round]:
    from servegraph.clients import Client
    from servegraph.serving.launcher import launch

    body = {"messages": [{"role": "user", "content": QUESTION}]}
    with launch("benchmarks.served:smollm2", timeout=600) as router, Client(router.address) as client:

        def one_round() -> tuple[float, float]:
            started = time.perf_counter()
            first = None
            for chunk in client.stream(body):
                if first is None:
                    first = time.perf_counter() - started
                final = chunk
            return final["usage"]["completion_tokens"] / (time.perf_counter() - started), first or 0.0

        client.invoke(body)
        yield one_round


def main() -> None:
    print(f"== SmolLM2-135M: {TOKENS} tokens, served (router + worker + gRPC stream) vs in-process generate ==")
    local = in_process()
    with served() as remote:
        rounds = [(local(), remote()) for _ in range(ROUNDS)]
    base_rate, rate = max(pair[0][0] for pair in rounds), max(pair[1][0] for pair in rounds)
    base_first, first = min(pair[0][1] for pair in rounds), min(pair[1][1] for pair in rounds)
    print(f"in-process generate : {base_rate:6.1f} tokens/s   first token {base_first * 1e3:6.1f} ms")
    print(f"served, streamed    : {rate:6.1f} tokens/s   first token {first * 1e3:6.1f} ms")
    print(
        f"  tokens/s ratio {rate / base_rate:.2f}x (target >= 0.95x); first token +{(first - base_first) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
