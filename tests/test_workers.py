"""Worker processes for real: served by a router and in the mock server. Killed workers come back,
calls on a dying worker fail fast naming the endpoint, nothing outlives shutdown (or a killed
router), worker output reaches the router's log, and a model that cannot load stops the start."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from served_models import CRASHY_WORKERS, IN_ROUTER, IN_WORKERS, MECHANISMS, PROXIES, build_bad_load, build_crashy
from servers import TESTS_DIR, alive, kill_all, serve, stop, wait_gone

import servegraph as sg
from servegraph.clients import Client


def retry(call, within: float = 10.0):
    """`call()` until it stops raising Unavailable (a worker coming back), for at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except sg.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- through a served router ----------------------------------------------------------------------


def test_every_mechanism_through_a_served_router():
    with serve("served_models:zoo") as served, Client(served.address, timeout=20) as client:
        result = client.invoke({"q": "hi"})
        assert set(result) == {*MECHANISMS, *PROXIES}
        router = served.process.pid
        assert {result[name]["pid"] for name in IN_ROUTER} == {router}
        assert router not in {result[name]["pid"] for name in (*IN_WORKERS, *PROXIES)}
        assert len({result[name]["pid"] for name in PROXIES}) == 1
        assert all(result[name]["loads"] == 1 for name in MECHANISMS)
        assert result["naive"]["loaded_here"] == sorted(IN_ROUTER)  # worker models never load in the router
        assert result["dedicated_process"]["loaded_here"] == ["dedicated_process"]
        assert [result[name]["endpoint"] for name in PROXIES] == list(PROXIES)
        body = {"models": ["dedicated_process"], "x": 1}
        assert client.invoke(body)["body"] == body
        assert client.invoke({"models": []}) == {}
        with pytest.raises(sg.ServingError, match="unknown models"):
            client.invoke({"models": ["nope"]})
        endpoints = {e["name"]: e for e in client.describe()["endpoints"]}
        assert endpoints["finance"]["kind"] == "proxy" and endpoints["naive"]["execution_mechanism"] == "naive"
        stream = list(client.stream({"models": ["process_pool"]}))  # a unary model streams one chunk
        assert [chunk["model"] for chunk in stream] == ["process_pool"]


@pytest.fixture(scope="module")
def crashy():
    with serve("served_models:crashy") as served, Client(served.address, timeout=20) as client:
        yield served, client


def pid_of(invoke, name: str) -> int:
    """The pid of the worker serving endpoint `name`, from its reply (a streaming model's: the first chunk)."""
    result = retry(lambda: invoke({"models": [name]}))
    return (result[0] if isinstance(result, list) else result)["pid"]


def test_a_killed_worker_is_replaced_and_serves_again(crashy):
    served, client = crashy
    for name in ("victim", "pooled", "helper"):
        before = pid_of(client.invoke, name)
        os.kill(before, signal.SIGKILL)
        deadline = time.monotonic() + 5  # once the router has seen the death, calls wait for the replacement
        while f"(pid {before}) exited with code -9; restarting" not in served.log():
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.02)
        after = client.invoke({"models": [name]})["pid"]
        assert after != before and alive(after)
        assert [client.invoke({"models": [name]})["pid"] for _ in range(3)] == [after] * 3
    assert "exited with code -9; restarting" in served.log()


def test_a_call_in_flight_on_a_killed_worker_fails_with_unavailable_naming_the_endpoint(crashy):
    _, client = crashy
    for name in ("victim", "pooled", "helper"):
        pid = pid_of(client.invoke, name)
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.invoke, {"models": [name], "sleep": 30})
            time.sleep(0.5)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(sg.Unavailable, match=f"model '{name}' in step 'runner' failed") as error:
                call.result(timeout=10)
            assert time.monotonic() - killed < 5
        assert error.value.code == "UNAVAILABLE"
        assert f"Unavailable: model '{name}'" in str(error.value)  # a proxy is named, not only its shared model
        assert pid_of(client.invoke, name) != pid


def test_a_model_timeout_bounds_a_served_call(crashy):
    _, client = crashy
    started = time.monotonic()
    with pytest.raises(sg.DeadlineExceeded, match=r"model 'bounded' did not answer within its 0\.5s timeout") as error:
        client.invoke({"models": ["bounded"], "sleep": 3})
    assert time.monotonic() - started < 2.5
    assert error.value.code == "DEADLINE_EXCEEDED"


def test_a_worker_generator_streams_through_the_router_as_chunks_are_made(crashy):
    _, client = crashy
    arrivals = [(time.time(), chunk) for chunk in client.stream({"models": ["tokens"], "n": 3, "delay": 0.3})]
    assert [chunk["i"] for _, chunk in arrivals] == [0, 1, 2]
    assert arrivals[0][0] < arrivals[-1][1]["at"], "the first chunk must reach the client before the last is made"
    assert [chunk["i"] for chunk in client.invoke({"models": ["tokens"], "n": 2})] == [0, 1]


def test_worker_output_reaches_the_router_log_prefixed_with_the_endpoint(crashy):
    served, client = crashy
    client.invoke({"models": ["printer"], "word": "served-hello"})
    deadline = time.monotonic() + 5
    while "stderr says served-hello" not in served.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = served.log()
    assert "[printer] stdout says served-hello" in log
    assert "[printer] stderr says served-hello" in log
    assert "[printer] printer loading in" in log


def worker_pids(client: Client) -> set[int]:
    return {pid_of(client.invoke, name) for name in CRASHY_WORKERS}


def socket_directories(pids) -> set[str]:
    """Where the workers' sockets are (``--socket PATH`` on their command lines)."""
    found = set()
    for pid in pids:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        found.add(os.path.dirname(arguments[arguments.index("--socket") + 1]))
    return found


def test_no_worker_outlives_a_router_stopped_with_sigterm():
    with serve("served_models:crashy") as served, Client(served.address, timeout=20) as client:
        pids = worker_pids(client)
        assert len(pids) == len(CRASHY_WORKERS) and served.process.pid not in pids
        try:
            assert stop(served.process) == 0
            assert wait_gone(pids, 2.0) == set()
        finally:
            kill_all(pids)


def test_workers_of_a_router_killed_with_sigkill_exit_on_their_own():
    with serve("served_models:crashy") as served, Client(served.address, timeout=20) as client:
        pids = worker_pids(client)
        directories = socket_directories(pids)
        try:
            with ThreadPoolExecutor(2) as pool:  # busy workers too: a sync predict in the middle of a long call
                busy = [pool.submit(client.invoke, {"models": [name], "sleep": 30}) for name in ("victim", "pooled")]
                time.sleep(0.5)
                served.process.kill()
                served.process.wait(5)
                killed = time.monotonic()
                assert wait_gone(pids, 3.0) == set(), "workers must watch their parent"
                assert time.monotonic() - killed < 3.0
                assert not [path for path in directories if os.path.exists(path)], "the last worker out removes them"
                for call in busy:
                    with pytest.raises(sg.Unavailable):
                        call.result(timeout=5)
        finally:
            kill_all(pids)


def test_a_model_that_cannot_load_stops_the_router_with_its_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "servegraph.cli", "serve", "served_models:bad_load", "--port", "0"],
        cwd=TESTS_DIR,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "worker 'broken' exited with code 3 while loading its models" in result.stderr
    assert "RuntimeError: weights are missing" in result.stderr
    assert "in load" in result.stderr


# -- through the mock server ----------------------------------------------------------------------


def test_mock_worker_killed_mid_call_fails_fast_then_comes_back_and_close_leaves_nothing():
    with build_crashy().to_mock_server() as mock:
        invoke = lambda body: mock.test(body=body)  # noqa: E731
        killed = {name: pid_of(invoke, name) for name in ("victim", "pooled", "helper")}
        try:
            with ThreadPoolExecutor(len(killed)) as pool:
                calls = {name: pool.submit(invoke, {"models": [name], "sleep": 30}) for name in killed}
                time.sleep(0.5)
                started = time.monotonic()
                kill_all(killed.values())
                for name, call in calls.items():
                    with pytest.raises(sg.Unavailable, match=f"model '{name}'.* is unavailable"):
                        call.result(timeout=10)
                assert time.monotonic() - started < 5
            pids = {name: pid_of(invoke, name) for name in CRASHY_WORKERS}
            assert set(pids.values()).isdisjoint(killed.values())
            socket_dir = mock.engine.models._socket_dir
            assert socket_dir is not None and socket_dir.is_dir()
        finally:
            kill_all(killed.values())
    assert wait_gone(set(pids.values()), 1.0) == set(), "closing the mock server stops every worker"
    assert not socket_dir.exists()


def test_mock_relays_worker_output_as_it_is_printed(caplog, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the worker must not depend on the caller's setting
    caplog.set_level(logging.INFO, logger="servegraph.worker")
    graph = sg.Graph("printer")
    graph.to(sg.ModelRunnerStep(name="runner")).respond().add_model(
        "chatty", "model_zoo.Printer", execution_mechanism="dedicated_process"
    )
    with graph.to_mock_server() as mock:
        mock.test(body={"word": "mock-hello"})
        deadline = time.monotonic() + 5
        while "stdout says mock-hello" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "[chatty] stdout says mock-hello" in caplog.text  # before the worker exits
        assert "[chatty] stderr says mock-hello" in caplog.text


def children() -> set[int]:
    """Live child processes of this test process."""
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
            if parent == me and state != "Z":
                found.add(int(stat.parent.name))
    return found


def test_mock_start_fails_with_a_graph_error_naming_the_worker_and_its_traceback():
    before = children()
    with pytest.raises(sg.GraphError) as error:
        build_bad_load().to_mock_server().start()
    assert children() == before  # the worker that did load is stopped too
    message = str(error.value)
    assert "worker 'broken' exited with code 3 while loading its models" in message
    assert 'model_zoo.py", line' in message and "in load" in message
    assert "RuntimeError: weights are missing" in message
