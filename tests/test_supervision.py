"""How the router stops and watches its workers, for real: a signal to the whole process group drains
like one to the router, no worker outlives its router whatever its models do, a worker hung past its
model's timeout is restarted (and not ready meanwhile), and calls whose caller gave up are dropped."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from servers import kill_all, serve, wait_gone

import servegraph as sg
from servegraph.clients import Client


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
