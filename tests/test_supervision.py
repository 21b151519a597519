"""How the router stops and watches its workers, for real: a signal to the whole process group drains
like one to the router, no worker outlives its router whatever its models do, a worker hung past its
model's timeout is restarted (and not ready meanwhile), and calls whose caller gave up are dropped."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import kill_all, serve, wait_gone

import servegraph as sg
from servegraph.clients import Client

grpcclient = pytest.importorskip("tritonclient.grpc")


def pid_of(client: Client, name: str) -> int:
    return client.invoke({"models": [name]})["pid"]


def wait_in_flight(client: Client, counts: dict[str, int], within: float = 10.0) -> None:
    """Wait until the router has the given numbers of calls in flight to the given endpoints."""
    deadline = time.monotonic() + within
    while {row["name"]: row["in_flight"] for row in client.stats() if row["name"] in counts} != counts:
        assert time.monotonic() < deadline, client.stats()
        time.sleep(0.02)


def test_a_signal_to_the_whole_process_group_drains_in_flight_calls_like_one_to_the_router():
    """systemd's stop and Ctrl-C signal every process of the group, workers too. Several routers, as
    the router used to hang now and then (a supervisor restarting the workers it was stopping)."""
    for _ in range(5):
        with serve("served_models:draining") as served, Client(served.address, timeout=20) as client:
            workers = {pid_of(client, name) for name in ("slow", "async_slow")}
            try:
                with ThreadPoolExecutor(9) as pool:
                    calls = [pool.submit(client.invoke, {"models": ["async_slow"], "sleep": 1.5}) for _ in range(8)]
                    calls.append(pool.submit(client.invoke, {"models": ["slow"], "sleep": 1.5}))
                    wait_in_flight(client, {"async_slow": 8, "slow": 1})
                    os.killpg(served.process.pid, signal.SIGTERM)
                    signalled = time.monotonic()
                    assert [call.result(timeout=10)["slept"] for call in calls] == [1.5] * 9
                assert served.process.wait(10) == 0
                assert time.monotonic() - signalled < 5
                assert wait_gone(workers, 2.0) == set()
                assert "restarting" not in served.log()
            finally:
                kill_all(workers)


def test_workers_die_within_2s_of_a_killed_router_even_when_a_model_blocks_their_event_loop():
    with serve("served_models:draining") as served, Client(served.address, timeout=40) as client:
        workers = {pid_of(client, name) for name in ("blocking", "slow")}
        try:
            with ThreadPoolExecutor(2) as pool:
                busy = [
                    pool.submit(client.invoke, {"models": ["blocking"], "block": 30}),
                    pool.submit(client.invoke, {"models": ["slow"], "sleep": 30}),
                ]
                wait_in_flight(client, {"blocking": 1, "slow": 1})
                time.sleep(0.2)  # into the predicts
                served.process.kill()
                served.process.wait(5)
                assert wait_gone(workers, 2.0) == set()
                for call in busy:
                    with pytest.raises(sg.Unavailable):
                        call.result(timeout=5)
        finally:
            kill_all(workers)


@pytest.fixture(scope="module")
def lifecycle():
    with (
        serve("served_models:lifecycle", "--metrics-port", "0") as served,
        Client(served.address, timeout=20) as client,
    ):
        yield served, client


def restarts(served, worker: str) -> float:
    url = re.search(r"metrics on (http://\S+/metrics)", served.log())[1]
    with urllib.request.urlopen(url, timeout=5) as reply:
        families = text_string_to_metric_families(reply.read().decode())
    samples = {(s.name, s.labels.get("worker")): s.value for family in families for s in family.samples}
    return samples[("servegraph_worker_restarts_total", worker)]


def test_a_worker_hung_past_its_models_timeout_is_restarted_and_not_ready_meanwhile(lifecycle):
    served, client = lifecycle
    triton = grpcclient.InferenceServerClient(served.address)
    before = pid_of(client, "hung")
    started = time.monotonic()
    with pytest.raises(sg.DeadlineExceeded, match=r"within its 1\.0s timeout"):
        client.invoke({"models": ["hung"], "sleep": 60})
    assert time.monotonic() - started < 2
    assert not triton.is_model_ready("hung"), "a worker still busy past its model's timeout is not ready"
    assert triton.is_model_ready("slow")
    deadline = time.monotonic() + 15  # the 2 s grace, then a fresh worker loads
    while True:
        try:
            after = pid_of(client, "hung")
            break
        except (sg.DeadlineExceeded, sg.Unavailable):
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.1)
    assert after != before
    assert wait_gone({before}, 2.0) == set()
    assert triton.is_model_ready("hung")
    assert restarts(served, "hung") == 1
    assert f"worker 'hung' (pid {before}) has not answered a call" in served.log()
    assert [pid_of(client, "hung") for _ in range(3)] == [after] * 3


def test_a_sync_call_whose_caller_gave_up_is_dropped_before_it_starts(lifecycle):
    _, client = lifecycle
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.invoke, {"models": ["slow"], "sleep": 2})
        wait_in_flight(client, {"slow": 1})
        with pytest.raises(sg.DeadlineExceeded):  # queued behind the first call, then abandoned
            client.invoke({"models": ["slow"], "sleep": 5}, timeout=1)
        first.result(timeout=10)
    first_done = time.monotonic()
    pid_of(client, "slow")
    assert time.monotonic() - first_done < 1.0, "the next call must not wait for the abandoned one"


def test_an_async_predict_whose_caller_gave_up_is_cancelled(lifecycle):
    _, client = lifecycle
    started = time.monotonic()
    with pytest.raises(sg.DeadlineExceeded):
        client.invoke({"models": ["serial"], "sleep": 5}, timeout=1)
    pid_of(client, "serial")  # waits for the model's lock while the abandoned predict holds it
    assert time.monotonic() - started < 2.5


def test_a_stream_whose_reader_stalls_frees_its_models_thread(monkeypatch):
    """A client that stops reading without cancelling holds the worker's one thread for
    SERVEGRAPH_STREAM_STALL_TIMEOUT seconds at most."""
    monkeypatch.setenv("SERVEGRAPH_STREAM_STALL_TIMEOUT", "1")
    with serve("served_models:tokens") as served, Client(served.address, timeout=20) as client:
        stalled = client.stream({"n": 1_000_000, "pad": 10_000})
        try:
            next(stalled)  # then reads no more: the buffers on the way fill, and the generator waits
            started = time.monotonic()
            assert [chunk["i"] for chunk in client.stream({"n": 2})] == [0, 1]
            assert time.monotonic() - started < 8
        finally:
            stalled.close()
