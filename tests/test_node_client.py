"""The Node.js example client (clients/node, @grpc/grpc-js) against a live router."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from servers import serve

CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None or NPM is None, reason="Node.js is not installed (needs node and npm)")


@pytest.fixture(scope="session")
def client_js() -> Path:
    """Installs the client's npm dependencies once; skipped while node_modules matches package*.json."""
    lock = CLIENT_DIR / "package-lock.json"
    manifests = [path for path in (CLIENT_DIR / "package.json", lock) if path.exists()]
    wanted = hashlib.sha256(b"".join(path.read_bytes() for path in manifests)).hexdigest()
    stamp = CLIENT_DIR / "node_modules" / ".servegraph-installed"
    if not stamp.exists() or stamp.read_text() != wanted:
        command = [NPM, "ci" if lock.exists() else "install", "--no-audit", "--no-fund"]
        result = subprocess.run(command, cwd=CLIENT_DIR, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        stamp.write_text(wanted)
    return CLIENT_DIR / "client.js"


@pytest.fixture(scope="module")
def flow():
    with serve("served_graphs:flow") as served:
        yield served


def node(client_js: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the client from another folder: it must find the protos relative to itself."""
    return subprocess.run(
        [NODE, str(client_js), *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


def test_invoke_prints_the_response_body(client_js, flow, tmp_path):
    result = node(client_js, tmp_path, flow.address, "invoke", '{"question": " hi "}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"question": "hi", "answer": "Q: hi", "steps": 3}


def test_json_values_round_trip(client_js, flow, tmp_path):
    body = {"question": "q", "n": -2.5, "ok": True, "none": None, "list": [1, "a", [], {}], "nested": {"k": [False]}}
    result = node(client_js, tmp_path, flow.address, "invoke", json.dumps(body))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {**body, "answer": "Q: q", "steps": 3}


def test_a_failing_step_gives_internal_and_the_step_name(client_js, flow, tmp_path):
    result = node(client_js, tmp_path, flow.address, "invoke", '{"question": "q", "fail": "boom"}')
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ERROR INTERNAL ")
    assert "step 'fail' failed: ValueError: asked to fail: boom" in result.stderr


def test_a_bad_body_gives_invalid_argument(client_js, flow, tmp_path):
    result = node(client_js, tmp_path, flow.address, "invoke", '{"no": "question"}')
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR INVALID_ARGUMENT ")
    assert "'question' field" in result.stderr


def test_an_unreachable_server_gives_unavailable(client_js, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: connections are refused
        result = node(client_js, tmp_path, address, "invoke", "{}")
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR UNAVAILABLE ")


def test_describe_lists_the_steps(client_js, flow, tmp_path):
    result = node(client_js, tmp_path, flow.address, "describe")
    assert result.returncode == 0, result.stderr
    description = json.loads(result.stdout)
    assert description["name"] == "flow"
    assert description["streaming"] is False
    assert [step["name"] for step in description["steps"]] == ["clean", "answer", "stamp", "fail", "slow"]
    assert description["steps"][0]["outlets"] == ["answer"]
    assert description["spec"]["steps"]["answer"]["class_args"] == {"prefix": "Q"}


def test_stream_prints_each_chunk_as_it_arrives(client_js, tmp_path):
    with serve("served_graphs:streaming") as served:
        process = subprocess.Popen(
            [NODE, str(client_js), served.address, "stream", '{"n": 3, "delay": 0.3}'],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            lines = [(time.time(), line) for line in iter(process.stdout.readline, "")]
            assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
    chunks = [(arrived, json.loads(line)) for arrived, line in lines]
    assert [chunk["i"] for _, chunk in chunks] == [0, 1, 2]
    first_arrived, last_produced = chunks[0][0], chunks[-1][1]["at"]
    assert first_arrived < last_produced, "the first chunk must be printed before the graph produced the last one"


def test_tensors_in_the_response_become_lists(client_js, tmp_path):
    with serve("served_graphs_extra:arrays") as served:
        result = node(client_js, tmp_path, served.address, "invoke", '{"label": "x"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "f32": [[0, 0.5, 1], [1.5, 2, 2.5]],
        "i64": [-1, 2**40],
        "flags": [True, False],
        "raw": "aGk=",  # bytes come back base64
        "label": "x",
    }
