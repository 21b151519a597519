"""LLM graphs for tests; the tiny model's directory comes from $TINY_LLM_DIR, the stub's URL from
$OPENAI_STUB_URL (both set by tests/test_llm.py before serving)."""

from __future__ import annotations

import os
import time

import servegraph as sg

TINY = os.environ.get("TINY_LLM_DIR", "")


class PacedLLM(sg.LLModel):
    """The tiny model decoding at ~100 steps/s, so that a test can cancel a stream mid-answer."""

    def load(self) -> None:
        super().load()
        backend = self.provider.backend
        forward = backend.forward

        def paced(work):
            time.sleep(0.01)
            return forward(work)

        backend.forward = paced


def prompt(system: str, **config) -> sg.LLMPromptArtifact:
    return sg.LLMPromptArtifact(
        model_artifact=TINY,
        prompt_template=[{"role": "system", "content": system}, {"role": "user", "content": "{question}"}],
        prompt_legend={"question": "q"},
        invocation_config={"max_tokens": 24, **config},
    )


def only_text(body: dict) -> object:
    return body["outputs"]


class ByTopic(sg.ModelSelector):
    def select(self, event, available_models):
        return [event.body.get("topic", "finance")]


chat = sg.Graph("chat")
chat.add_shared_model("tiny", "LLModel", "dedicated_process", model_artifact=TINY, result_path="outputs")
proxies = sg.ModelRunnerStep(name="proxies", model_runner_selector="served_llms.ByTopic")
proxies.add_shared_model_proxy("finance", prompt("You talk about markets."), "tiny")
proxies.add_shared_model_proxy("sport", prompt("You talk about sport and teams and goals."), "tiny")
chat.to(proxies).to(name="text", handler=only_text).respond()


paced = sg.Graph("paced")
runner = sg.ModelRunnerStep(name="llm")
runner.add_model("paced", PacedLLM, "dedicated_process", model_artifact=TINY, max_tokens=2000)
paced.to(runner).respond()

openai_chat = sg.Graph("openai-chat")
remote = sg.ModelRunnerStep(name="remote")
remote.add_model(
    "gpt",
    sg.LLModel,
    "asyncio",
    model_artifact=sg.LLMPromptArtifact(
        model_artifact="openai://stub-model",
        prompt_template=[{"role": "user", "content": "{question}"}],
        invocation_config={"temperature": 0.5},
    ),
    base_url=os.environ.get("OPENAI_STUB_URL", "http://127.0.0.1:9/v1"),
    api_key="test-key",
    result_path="outputs",
)
openai_chat.to(remote).respond()
