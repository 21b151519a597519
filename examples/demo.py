"""The demo: a guarded assistant on the embedded SmolLM2, streamed token by token.

    input guardrail → shared SmolLM2 behind two prompts (finance, sport), picked by a selector
                    → output filter

`make demo` (or ``python -m examples.demo "your question"``) serves this graph in a router process,
whose SmolLM2 runs in a worker process, and streams the answer into the terminal.
"""

from __future__ import annotations

import re
import sys
import time

import servegraph as sg

BLOCKED = re.compile(r"\b(password|credit card number|social security)\b", re.IGNORECASE)
SPORT = re.compile(r"\b(match|team|goal|player|league|football|soccer|tennis|game|olympic\w*)\b", re.IGNORECASE)
PROFANITY = re.compile(r"\b(damn|hell)\b", re.IGNORECASE)


def guardrail(body: dict) -> dict:
    """Input guardrail: a question is required, short, and asks for nothing secret."""
    question = str(body.get("question", "")).strip()
    if not question:
        raise sg.InvalidArgument("ask a question: the body needs a non-empty 'question'")
    if len(question) > 500:
        raise sg.InvalidArgument("the question is longer than 500 characters")
    if BLOCKED.search(question):
        raise sg.InvalidArgument("the input guardrail blocked this question: it asks for secrets")
    return {"question": question}


class TopicSelector(sg.ModelSelector):
    """Sport questions go to the sport prompt, everything else to the finance prompt."""

    def select(self, event: sg.Event, available_models: list[sg.EndpointName]) -> list[str]:
        return ["sport"] if SPORT.search(event.body["question"]) else ["finance"]


def output_filter(body: dict) -> object:
    """Output filter, once per streamed chunk: mask profanity; pass the final usage on."""
    output = body["outputs"]
    if isinstance(output, str):
        return PROFANITY.sub("****", output)
    return {"answer": PROFANITY.sub("****", output["answer"]), "usage": output["usage"]}


def prompt(system: str) -> sg.LLMPromptArtifact:
    return sg.LLMPromptArtifact(
        prompt_template=[{"role": "system", "content": system}, {"role": "user", "content": "{question}"}],
        invocation_config={"max_tokens": 120, "temperature": 0.0},
    )


graph = sg.Graph("demo")
graph.add_shared_model("smollm2", "LLModel", "dedicated_process", result_path="outputs")
assistant = sg.ModelRunnerStep(name="assistant", model_runner_selector=TopicSelector)
assistant.add_shared_model_proxy(
    "finance", prompt("You are a careful personal-finance assistant. Answer in two sentences."), "smollm2"
)
assistant.add_shared_model_proxy(
    "sport", prompt("You are an enthusiastic sports commentator. Answer in two sentences."), "smollm2"
)
graph.to(name="guardrail", handler=guardrail).to(assistant).to(name="filter", handler=output_filter).respond()


def main(argv: list[str]) -> int:
    from servegraph.clients import Client
    from servegraph.serving.launcher import launch

    question = " ".join(argv) or "How should I start saving for retirement?"
    print("starting the router ...", flush=True)
    with launch("examples.demo:graph", timeout=600) as router, Client(router.address) as client:
        print(f"router on {router.address}; graph: {client.describe()['name']}\n")
        print(f"Q: {question}\nA: ", end="", flush=True)
        started = time.perf_counter()
        first = None
        try:
            for chunk in client.stream({"question": question}):
                if isinstance(chunk, str):
                    first = first or time.perf_counter() - started
                    print(chunk, end="", flush=True)
                else:
                    usage = chunk["usage"]
        except sg.ServingError as error:  # a refusal (the guardrail's) is an answer, not a crash
            print(f"(refused) {error}")
            return 1
        elapsed = time.perf_counter() - started
        print(
            f"\n\n[{usage['completion_tokens']} tokens in {elapsed:.1f} s, first after {first or 0:.2f} s; "
            f"prompt {usage['prompt_tokens']} tokens]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
