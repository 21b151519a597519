"""Remote workers over TCP, for real: standalone `servegraph worker` processes on loopback ports, a
router that reaches them with ``--remote``: replicas share the calls, a lost replica fails only its
own calls and comes back, streams and cancels cross the hop, start-up refuses what it cannot use,
TLS and mutual TLS, and the router's health follows the replicas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import served_remote
from certs import Certs, make_certs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from servers import TESTS_DIR, serve, worker

import servegraph as sg
from servegraph.clients import Client
from servegraph.hosting import remote
from servegraph.hosting.endpoints import POOL
from servegraph.hosting.hub import ModelHub
from servegraph.models.placement import declarations, fingerprint
from servegraph.serving.launcher import LaunchedRouter
from servegraph.v1 import worker_pb2, worker_pb2_grpc

GRAPH = "served_remote:graph"


def call(client: Client, model: str = "M", **body) -> dict:
    return client.invoke({"models": [model], **body})


def pids(client: Client, n: int = 10) -> set[int]:
    return {call(client)["pid"] for _ in range(n)}


def settled_pids(client: Client, n: int = 4) -> set[int]:
    """`pids`, or none while a call meets a replica that has just gone (its calls fail until noticed)."""
    try:
        return pids(client, n)
    except sg.Unavailable:
        return set()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def wait_for(condition, within: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.1)


def wait_in_flight(client: Client, model: str, count: int) -> None:
    wait_for(lambda: {row["name"]: row["in_flight"] for row in client.stats()}[model] == count, what="calls in flight")


def worker_pid(launched: LaunchedRouter) -> int:
    """The worker's own pid: `servegraph worker` execs into it."""
    return launched.process.pid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused(*args: str, env: dict[str, str] | None = None, within: float = 30.0) -> tuple[int, str, float]:
    """Run `servegraph serve` expecting it to give up: its exit code, the one line saying why (the log
    aside; no traceback), how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "servegraph.cli", "serve", *args, "--port", "0"],
        cwd=TESTS_DIR,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR), **(env or {})},
        capture_output=True,
        text=True,
        timeout=within,
    )
    assert "Traceback" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("servegraph: ")]
    assert len(said) == 1, result.stderr
    return result.returncode, said[0], time.monotonic() - started


# --- the standalone worker -------------------------------------------------------------------------


def test_a_standalone_worker_prints_its_port_says_what_it_hosts_and_drains_on_sigterm():
    with worker(GRAPH, "--model", "M") as launched:
        assert re.fullmatch(r"serving worker 'M' on 127\.0\.0\.1:(\d+)\n", launched.output[-1])
        assert launched.port > 0
        assert health(launched.address) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(launched.address) as channel:
            info = worker_pb2_grpc.WorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=5)
        placements = ModelHub(served_remote.graph).endpoints.worker_of("M")[1]
        assert (info.name, list(info.endpoints), info.fingerprint) == (
            "M",
            ["M"],
            fingerprint(declarations(placements)),
        )
        assert "--placements-fd" in Path(f"/proc/{worker_pid(launched)}/cmdline").read_text()
        launched.process.send_signal(signal.SIGTERM)
        assert launched.process.wait(5) == 0  # no router connected: no notice to wait for


def test_worker_refuses_what_it_cannot_host():
    for args, message in (
        (("--model", "local"), "model 'local' runs in the router (naive)"),
        (("--model", "nope"), "graph 'remote' has no model 'nope'"),
        (("--pool",), "graph 'remote' has no process_pool models"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "servegraph.cli", "worker", GRAPH, *args, "--port", "0"],
            cwd=TESTS_DIR,
            env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_remote_names_map_onto_the_workers_the_graph_would_spawn():
    hub = ModelHub(
        served_remote.kinds, {"big": ["a:1"], "llm": ["b:1"], "crunch_a": ["c:1", "d:1"], "crunch_b": ["c:1"]}
    )
    assert hub.remotes == {"big": ["a:1"], "llm": ["b:1"], POOL: ["c:1", "d:1"]}
    for name, message in (
        ("finance", "'finance' is a proxy of shared model 'llm': name the shared model"),
        ("fast", "model 'fast' runs in the router (thread_pool)"),
        ("nope", "graph 'kinds' has no model 'nope'"),
    ):
        with pytest.raises(sg.GraphError, match=re.escape(f"--remote {name}: {message}")) as error:
            ModelHub(served_remote.kinds, {name: ["a:1"]})
        assert "the models that run in workers: llm, big, crunch_a (pool), crunch_b (pool)" in str(error.value)


# --- two replicas and a router ---------------------------------------------------------------------


class Replicas:
    """Two replicas of M and one of `tokens` on loopback, and a router that reaches them; the test
    may kill and restart replicas (on the same port): whatever runs at the end is stopped."""

    def __init__(self, stack: contextlib.ExitStack):
        self.stack = stack
        self.m = [self.start("M"), self.start("M")]
        self.tokens = self.start("tokens")
        addresses = ",".join(replica.address for replica in self.m)
        self.router = stack.enter_context(
            serve(
                GRAPH, "--remote", f"M={addresses}", "--remote", f"tokens={self.tokens.address}", "--metrics-port", "0"
            )
        )
        self.client = stack.enter_context(Client(self.router.address, timeout=20))

    def start(self, model: str, *args: str) -> LaunchedRouter:
        return self.stack.enter_context(worker(GRAPH, "--model", model, *args))

    def restart(self, index: int) -> None:
        """A fresh replica on the port of a dead one."""
        self.m[index] = self.start("M", "--port", str(self.m[index].port))

    def metrics(self) -> dict[tuple[str, str], float]:
        url = re.search(r"metrics on (http://\S+/metrics)", self.router.log())[1]
        with urllib.request.urlopen(url, timeout=5) as reply:
            families = text_string_to_metric_families(reply.read().decode())
        return {(s.name, s.labels.get("worker", "")): s.value for family in families for s in family.samples}


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    with contextlib.ExitStack() as stack:
        yield Replicas(stack)


def test_calls_spread_over_both_replicas(replicas):
    with ThreadPoolExecutor(4) as pool:
        answered = list(pool.map(lambda _: call(replicas.client, sleep=0.05)["pid"], range(16)))
    assert set(answered) == {worker_pid(replica) for replica in replicas.m}
    assert call(replicas.client, "local")["pid"] == replicas.router.process.pid


def test_a_token_stream_crosses_the_hop_and_a_cancel_stops_the_generator(replicas, tmp_path):
    chunks = list(replicas.client.stream({"models": ["tokens"], "n": 3}))
    assert [chunk["token"] for chunk in chunks] == [0, 1, 2]
    assert {chunk["pid"] for chunk in chunks} == {worker_pid(replicas.tokens)}
    stopped = tmp_path / "stopped"
    stream = replicas.client.stream({"models": ["tokens"], "n": 10_000, "delay": 0.02, "stopped": str(stopped)})
    assert [next(stream)["token"], next(stream)["token"]] == [0, 1]
    stream.close()
    wait_for(stopped.exists, within=5, what="the worker's generator to be closed")
    assert stopped.read_text() == str(worker_pid(replicas.tokens))


def test_a_killed_replica_fails_only_its_calls_and_comes_back_on_the_same_port(replicas):
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(call, replicas.client, sleep=2) for _ in range(4)]
        wait_in_flight(replicas.client, "M", 4)
        time.sleep(0.2)  # into the predicts: two on each replica
        lost, kept = replicas.m
        lost.process.kill()
        outcomes = []
        for future in calls:
            try:
                outcomes.append(future.result(timeout=10)["pid"])
            except sg.Unavailable as error:
                assert lost.address in str(error)
                outcomes.append("unavailable")
    assert sorted(map(str, outcomes)) == sorted(["unavailable"] * 2 + [str(worker_pid(kept))] * 2)
    assert pids(replicas.client) == {worker_pid(kept)}
    replicas.restart(0)
    wait_for(lambda: worker_pid(replicas.m[0]) in settled_pids(replicas.client), what="the restarted replica's calls")
    assert replicas.metrics()[("servegraph_worker_restarts_total", lost.address)] == 1


def test_a_replica_drains_on_sigterm_while_the_other_takes_the_new_calls(replicas):
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(call, replicas.client, sleep=1.5) for _ in range(2)]
        wait_in_flight(replicas.client, "M", 2)
        time.sleep(0.2)
        draining, kept = replicas.m
        draining.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert pids(replicas.client, 3) <= {worker_pid(draining), worker_pid(kept)}
        assert {future.result(timeout=10)["pid"] for future in calls} == {worker_pid(draining), worker_pid(kept)}
    assert draining.process.wait(10) == 0
    assert pids(replicas.client) == {worker_pid(kept)}
    replicas.restart(0)
    wait_for(lambda: worker_pid(replicas.m[0]) in settled_pids(replicas.client), what="the restarted replica's calls")


def test_router_health_follows_the_replicas(replicas):
    address = replicas.router.address
    assert health(address) == health_pb2.HealthCheckResponse.SERVING
    for replica in replicas.m:
        replica.process.kill()
    wait_for(lambda: health(address) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
    with pytest.raises(sg.Unavailable, match="no replica of remote worker 'M' takes calls"):
        call(replicas.client)
    assert call(replicas.client, "local")["tag"] is None  # the rest of the graph still serves
    metrics = replicas.metrics()
    assert [metrics[("servegraph_worker_up", replica.address)] for replica in replicas.m] == [0, 0]
    replicas.restart(0)
    replicas.restart(1)
    wait_for(lambda: health(address) == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")
    assert pids(replicas.client) <= {worker_pid(replica) for replica in replicas.m}
    up = [("servegraph_worker_up", replica.address) for replica in replicas.m]
    wait_for(lambda: [replicas.metrics()[key] for key in up] == [1, 1], what="both replicas up")


def test_a_replica_replaced_by_a_wrong_one_is_not_used(replicas):
    """Later, a worker of another graph on a replica's port is logged and left out."""
    lost = replicas.m[0]
    lost.process.kill()
    wait_for(lambda: settled_pids(replicas.client) == {worker_pid(replicas.m[1])}, what="calls on the other replica")
    replicas.m[0] = replicas.stack.enter_context(
        worker("served_remote:other", "--model", "M", "--port", str(lost.port))
    )
    wait_for(lambda: "hosts other models" in replicas.router.log(), what="the mismatch in the log")
    assert pids(replicas.client) == {worker_pid(replicas.m[1])}
    replicas.m[0].process.kill()
    replicas.restart(0)
    wait_for(lambda: worker_pid(replicas.m[0]) in settled_pids(replicas.client), what="the right replica back")


def test_a_dns_name_is_followed_as_its_replicas_come_and_go(monkeypatch):
    """A headless Service's name resolves to every ready pod: replicas join and leave with its answer."""
    with (
        worker(GRAPH, "--model", "M") as first,
        worker(GRAPH, "--model", "M", "--host", "127.0.0.2", "--port", str(first.port)) as second,
    ):
        answer = [first.address]

        async def lookup(host: str, port: int) -> list[str]:
            assert (host, port) == ("replicas.test", first.port)
            return list(answer)

        monkeypatch.setattr(remote, "lookup", lookup)
        monkeypatch.setattr(remote, "RESOLVE_INTERVAL", 0.1)

        async def follow() -> None:
            placements = ModelHub(served_remote.graph).endpoints.worker_of("M")[1]
            pool = remote.RemotePool("M", placements, [f"dns:///replicas.test:{first.port}"], None)
            await pool.start()
            try:

                async def serving(addresses: list[str]) -> None:
                    async with asyncio.timeout(10):
                        while sorted(r.name for r in pool.processes if not r.is_down()) != sorted(addresses):
                            await asyncio.sleep(0.05)
                    assert [r.name for r in pool.processes] == addresses

                await serving([first.address])
                assert [r.server_name for r in pool.replicas()] == ["replicas.test"]  # what TLS checks
                answer.append(second.address)
                await serving([first.address, second.address])
                answer.remove(first.address)
                await serving([second.address])
                assert pool.pick().name == second.address
            finally:
                await pool.stop()

        asyncio.run(follow())


# --- what start-up refuses -------------------------------------------------------------------------


def test_a_name_that_is_no_worker_model_is_refused_in_one_line():
    code, printed, _ = refused(GRAPH, "--remote", "local=127.0.0.1:1")
    assert code == 1
    assert printed == (
        "servegraph: --remote local: model 'local' runs in the router (naive); "
        "the models that run in workers: M, tokens"
    )


def test_an_address_that_never_answers_is_refused_in_one_line():
    port = free_port()
    code, printed, took = refused(
        GRAPH, "--remote", f"M=127.0.0.1:{port}", "--remote", f"tokens=127.0.0.1:{port}",
        env={"SERVEGRAPH_REMOTE_TIMEOUT": "2"},
    )  # fmt: skip
    assert code == 1, printed
    assert f"at 127.0.0.1:{port} did not answer within 2s: UNAVAILABLE" in printed
    assert took < 15


def test_a_worker_serving_another_graph_is_refused_in_one_line():
    with worker(GRAPH, "--model", "M") as replica, worker(GRAPH, "--model", "tokens") as tokens:
        code, printed, _ = refused(
            "served_remote:other", "--remote", f"M={replica.address}", "--remote", f"tokens={tokens.address}"
        )
    assert code == 1, printed
    assert f"remote worker at {replica.address} hosts other models than this graph's 'M'" in printed


# --- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_worker(certs: Certs, model: str = "M", *extra: str) -> contextlib.AbstractContextManager[LaunchedRouter]:
    return worker(
        GRAPH, "--model", model, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), *extra
    )


def test_tls_and_mutual_tls_to_the_workers(certs):
    client_cert = ("--worker-tls-cert", str(certs.client_cert), "--worker-tls-key", str(certs.client_key))
    mutual = ("--tls-client-ca", str(certs.ca))
    with (
        tls_worker(certs) as tls_only,
        tls_worker(certs, "tokens") as tls_tokens,
        tls_worker(certs, "M", *mutual) as mutual_m,
        tls_worker(certs, "tokens", *mutual) as mutual_tokens,
    ):
        for replica, tokens, extra in ((tls_only, tls_tokens, ()), (mutual_m, mutual_tokens, client_cert)):
            remotes = ("--remote", f"M={replica.address}", "--remote", f"tokens={tokens.address}")
            with (
                serve(GRAPH, *remotes, "--worker-tls-ca", str(certs.ca), *extra) as router,
                Client(router.address, timeout=20) as client,
            ):
                assert pids(client, 2) == {worker_pid(replica)}
                assert [chunk["token"] for chunk in client.stream({"models": ["tokens"], "n": 2})] == [0, 1]
        with worker(GRAPH, "--model", "tokens") as plaintext:  # a router that insists on TLS says so, at once
            code, printed, took = refused(
                GRAPH, "--remote", f"M={tls_only.address}", "--remote", f"tokens={plaintext.address}",
                "--worker-tls-ca", str(certs.ca),
            )  # fmt: skip
        assert code == 1 and f"'tokens' at {plaintext.address} refuses the connection: UNAVAILABLE" in printed, printed
        assert "handshake failed" in printed.lower()
        assert took < 15


def test_a_worker_with_a_client_ca_refuses_a_router_without_a_certificate_or_with_a_stranger_one(certs):
    stranger = ("--worker-tls-cert", str(certs.stranger_cert), "--worker-tls-key", str(certs.stranger_key))
    with tls_worker(certs, "M", "--tls-client-ca", str(certs.ca)) as mutual, tls_worker(certs, "tokens") as tokens:
        for extra in ((), stranger):
            code, printed, took = refused(
                GRAPH, "--remote", f"M={mutual.address}", "--remote", f"tokens={tokens.address}",
                "--worker-tls-ca", str(certs.ca), *extra,
            )  # fmt: skip
            assert code == 1 and f"remote worker 'M' at {mutual.address} refuses the connection" in printed, printed
            assert took < 15


def test_a_worker_certificate_from_another_ca_is_refused(certs):
    with tls_worker(certs) as replica, tls_worker(certs, "tokens") as tokens:
        code, printed, took = refused(
            GRAPH, "--remote", f"M={replica.address}", "--remote", f"tokens={tokens.address}",
            "--worker-tls-ca", str(certs.other_ca),
        )  # fmt: skip
    assert code == 1 and f"at {replica.address} refuses the connection: UNAVAILABLE" in printed, printed
    assert "CERTIFICATE_VERIFY_FAILED" in printed
    assert took < 15


def test_worker_tls_flags_need_remote_workers_and_readable_files(certs, tmp_path):
    code, printed, _ = refused(GRAPH, "--worker-tls-ca", str(certs.ca))
    assert (code, printed) == (
        1,
        "servegraph: --worker-tls-ca, --worker-tls-cert and --worker-tls-key apply to --remote workers",
    )
    code, printed, _ = refused(GRAPH, "--remote", "M=127.0.0.1:1", "--worker-tls-ca", str(tmp_path / "missing.pem"))
    assert code == 1 and "missing.pem" in printed
