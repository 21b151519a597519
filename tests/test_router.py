"""The router process served with `servegraph serve`, called with the Python clients."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from servers import TESTS_DIR, serve, stop

import servegraph as sg
from servegraph.clients import AsyncClient, Client


@pytest.fixture(scope="module")
def flow():
    with serve("served_graphs:flow") as served:
        yield served


def test_invoke_runs_the_graph(flow):
    with Client(flow.address) as client:
        client.wait_ready(10)
        assert client.invoke({"question": " hi "}) == {"question": "hi", "answer": "Q: hi", "steps": 3}


def test_request_id_comes_back_from_the_engine(flow):
    with Client(flow.address) as client:
        response = client._stub.Invoke(sg_request({"question": "x"}, request_id="req-42"))
        assert response.id == "req-42"


def sg_request(body, request_id=""):
    from servegraph import codec
    from servegraph.v1 import graph_pb2

    request = graph_pb2.InvokeRequest(id=request_id)
    codec.to_value(body, request.body, request.tensors)
    return request


def test_errors_map_to_status_codes_and_the_server_keeps_serving(flow):
    with Client(flow.address) as client:
        with pytest.raises(sg.InvalidArgument, match="'question' field") as bad:
            client.invoke({"no": "question"})
        assert bad.value.code == "INVALID_ARGUMENT"
        with pytest.raises(sg.ServingError, match=r"step 'fail' failed: ValueError: asked to fail: boom") as failed:
            client.invoke({"question": "q", "fail": "boom"})
        assert failed.value.code == "INTERNAL"
        with pytest.raises(sg.ServingError, match="response cannot be sent back: cannot encode a set") as unsent:
            client.invoke({"question": "q", "unsendable": True})
        assert unsent.value.code == "INTERNAL"
        with pytest.raises(sg.DeadlineExceeded):
            client.invoke({"question": "q", "sleep": 2}, timeout=0.3)
        assert client.invoke({"question": "still up"})["answer"] == "Q: still up"


def test_a_bad_request_does_not_disturb_concurrent_ones(flow):
    async def main():
        async with AsyncClient(flow.address) as client:
            good = [client.invoke({"question": f"q{i}", "sleep": 0.2}) for i in range(20)]
            bad = [client.invoke({"question": "q", "fail": str(i)}) for i in range(20)]
            return await asyncio.gather(*good, *bad, return_exceptions=True)

    results = asyncio.run(main())
    assert [r["answer"] for r in results[:20]] == [f"Q: q{i}" for i in range(20)]
    assert all(isinstance(r, sg.ServingError) and r.code == "INTERNAL" for r in results[20:])


def test_describe_lists_steps_and_wiring(flow):
    with Client(flow.address) as client:
        description = client.describe()
    assert description["name"] == "flow"
    assert [step["name"] for step in description["steps"]] == ["clean", "answer", "stamp", "fail", "slow"]
    assert description["steps"][0]["outlets"] == ["answer"]
    assert description["spec"]["steps"]["answer"]["class_args"] == {"prefix": "Q"}
    assert description["mermaid"].startswith("flowchart")


def test_tensors_travel_as_raw_bytes_and_large_messages_pass():
    x = np.arange(2_000_000, dtype=np.float32).reshape(1000, 2000)  # 8 MB: over gRPC's 4 MB default
    with serve("served_graphs:tensors") as served, Client(served.address) as client:
        result = client.invoke({"x": x, "raw": b"\x00\x01"})
        bad = sg_request({"x": {"$tensor": 0}})
        bad.tensors.add(dtype="float32", shape=[3], data=b"\x00" * 10)
        with pytest.raises(Exception) as error:
            client._stub.Invoke(bad)
    assert result["sum"] == pytest.approx(float(x.sum(dtype=np.float64)), rel=1e-6)
    assert result["shape"] == [1000, 2000]
    assert result["doubled"].dtype == np.float32 and np.array_equal(result["doubled"], x * 2)
    assert result["raw"] == b"\x00\x01"
    assert "10 bytes do not match dtype float32 and shape [3]" in error.value.details()


def test_stream_yields_chunks_as_they_are_produced():
    with serve("served_graphs:streaming") as served, Client(served.address) as client:
        arrivals = []
        for chunk in client.stream({"n": 3, "delay": 0.4}):
            arrivals.append((time.time(), chunk))
    assert [chunk["i"] for _, chunk in arrivals] == [0, 1, 2]
    first_arrival, last_produced = arrivals[0][0], arrivals[-1][1]["at"]
    assert first_arrival < last_produced, "the first chunk must arrive before the generator finishes"


def test_async_stream_and_cancel():
    async def main(address):
        async with AsyncClient(address) as client:
            await client.wait_ready(10)
            chunks = [chunk async for chunk in client.stream({"n": 2})]
            stream = client.stream({"n": 100, "delay": 0.05})
            first = await anext(stream)
            await stream.aclose()
            return chunks, first

    with serve("served_graphs:streaming") as served:
        chunks, first = asyncio.run(main(served.address))
    assert [c["i"] for c in chunks] == [0, 1]
    assert first["i"] == 0


def test_router_routes_by_path_and_unknown_routes_are_not_found():
    with serve("served_graphs:router") as served, Client(served.address) as client:
        assert client.invoke("abc", path="/upper") == "ABC"
        assert client.invoke({"question": "x"}, path="/v2/models/answer/infer")["answer"] == "R: x"
        with pytest.raises(sg.NotFound, match="'nope'"):
            client.invoke({}, path="/v2/models/nope/infer")


def test_cycle_past_its_limit_is_internal_with_the_message():
    with serve("served_graphs:cyclic") as served, Client(served.address) as client:
        assert client.invoke({"n": 0, "until": 3}) == {"n": 3, "until": 3}
        with pytest.raises(sg.ServingError, match="Max iterations exceeded in step 'bump' for event e-1") as error:
            client.invoke({"n": 0, "until": 50}, id="e-1")
    assert error.value.code == "INTERNAL"


def test_sigterm_drains_in_flight_calls_and_exits_zero():
    with serve("served_graphs:flow") as served:
        results = []

        def call():
            with Client(served.address) as client:
                results.append(client.invoke({"question": "drain", "sleep": 1.0}))

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.4)
        code = stop(served.process)
        caller.join(10)
    assert code == 0
    assert results and results[0]["answer"] == "Q: drain"


def test_cli_invoke_and_describe(flow):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "servegraph.cli", *args], capture_output=True, text=True, timeout=30, check=False
        )

    invoked = cli("invoke", "--address", flow.address, "--body", '{"question": "cli"}')
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout)["answer"] == "Q: cli"
    described = cli("describe", "--address", flow.address)
    assert json.loads(described.stdout)["name"] == "flow"
    failed = cli("invoke", "--address", flow.address, "--body", '{"question": "q", "fail": "cli"}')
    assert failed.returncode == 1 and "step 'fail' failed" in failed.stderr


def serve_target(target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "servegraph.cli", "serve", target, *(args or ("--port", "0"))],
        cwd=TESTS_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("served_graphs:nothing", "servegraph: module 'served_graphs' has no attribute 'nothing'"),
        ("no_such_module:graph", "servegraph: no module named 'no_such_module'"),
        ("served_graphs.nested:graph", "servegraph: no module named 'served_graphs.nested'"),
        ("./no_such_file.py:graph", "servegraph: no graph module at"),
    ],
)
def test_serve_reports_a_graph_that_cannot_load_in_one_line(target, message):
    result = serve_target(target)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("which", ["--port", "--metrics-port"])
def test_serve_on_a_taken_port_fails_in_one_line(which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["--port", port] if which == "--port" else ["--port", "0", "--metrics-port", port]
        result = serve_target("served_graphs:flow", *args)
    assert result.returncode == 1
    doing = "listen on" if which == "--port" else "serve metrics on"
    assert f"servegraph: cannot {doing} 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_shows_the_traceback_when_the_graph_module_itself_fails_to_import():
    result = serve_target("served_broken:graph")
    assert result.returncode != 0
    assert "served_broken.py" in result.stderr
    assert "No module named 'servegraph_missing_dependency'" in result.stderr
