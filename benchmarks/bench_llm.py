"""SmolLM2 token streaming through router + worker + gRPC against `model.generate` in-process.

Both generate the same number of tokens from the same prompt with one torch thread, one after the
other (never competing for the 2 cores). Time to first token in-process is a 1-token `generate`.
"""

from __future__ import annotations

import os
import time

QUESTION = "Explain in a few sentences why diversification lowers the risk of a portfolio."
TOKENS = int(os.environ.get("BENCH_LLM_TOKENS", "64"))
ROUNDS = 5


def in_process() -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from servegraph.llm import model_directory

    torch.set_num_threads(1)
    directory = model_directory(None)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    rates, firsts = [], []
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
        for _ in range(ROUNDS):
            started = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            firsts.append(time.perf_counter() - started)
            started = time.perf_counter()
            output = model.generate(**inputs, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
            rates.append((output.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - started))
    return max(rates), min(firsts)


def served() -> tuple[float, float]:
    from servegraph.clients import Client
    from servegraph.launcher import launch

    rates, firsts = [], []
    body = {"messages": [{"role": "user", "content": QUESTION}]}
    with launch("benchmarks.served:smollm2", timeout=600) as router, Client(router.address) as client:
        client.invoke(body)
        for _ in range(ROUNDS):
            started = time.perf_counter()
            first = None
            for chunk in client.stream(body):
                if first is None:
                    first = time.perf_counter() - started
                final = chunk
            tokens = final["usage"]["completion_tokens"]
            rates.append(tokens / (time.perf_counter() - started))
            firsts.append(first or 0.0)
    return max(rates), min(firsts)


def main() -> None:
    print(f"== SmolLM2-135M: {TOKENS} tokens, served (router + worker + gRPC stream) vs in-process generate ==")
    base_rate, base_first = in_process()
    rate, first = served()
    print(f"in-process generate : {base_rate:6.1f} tokens/s   first token {base_first * 1e3:6.1f} ms")
    print(f"served, streamed    : {rate:6.1f} tokens/s   first token {first * 1e3:6.1f} ms")
    print(
        f"  tokens/s ratio {rate / base_rate:.2f}x (target >= 0.95x); first token +{(first - base_first) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
