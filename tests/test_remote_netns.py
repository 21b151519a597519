"""Remote workers as separate hosts would run them: a router and two replicas, each in a network
namespace of its own, linked by veth pairs on a private test subnet, over TCP with mutual TLS.

Needs root and a working ``ip netns``; skipped otherwise. The namespaces, their links and every process
started in them are removed at the end, even when a check fails. Traffic goes only between the
namespaces made here (and from this process to the router, over a link made here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from certs import Certs, make_certs
from servers import serve, wait_gone, worker

import servegraph as sg
from servegraph.clients import Client

GRAPH = "served_remote:graph"
PORT = "50052"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Hosts:
    """The namespaces: the router's (reached from here at `router_ip`) and each replica's (at `replica_ips`)."""

    router: str
    replicas: tuple[str, str]
    router_ip: str
    replica_ips: tuple[str, str]


def _subnet() -> int:
    """A third octet whose 10.231.N.0/24 and the next two are not in use on this host (several runs at once)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    for third in range(10 + (os.getpid() % 80) * 3, 250, 3):
        if not any(f"10.231.{third + i}." in used for i in range(3)):
            return third
    pytest.skip("no free 10.231.x.0/24 test subnet")


@contextlib.contextmanager
def namespaces() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no 'ip' command (iproute2)")
    tag = f"sg{os.getpid() % 100000}"
    router, replicas = f"{tag}-r", (f"{tag}-w1", f"{tag}-w2")
    made: list[str] = []
    try:
        try:
            for name in (router, *replicas):
                ip("netns", "add", name)
                made.append(name)
                ip("-n", name, "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, OSError) as error:
            pytest.skip(f"'ip netns' does not work here: {getattr(error, 'stderr', b'').decode().strip() or error}")
        third = _subnet()
        # this process → the router: a veth pair, one end here, one in the router's namespace
        ip("link", "add", f"{tag}h", "type", "veth", "peer", "name", f"{tag}r0", "netns", router)
        ip("addr", "add", f"10.231.{third}.1/24", "dev", f"{tag}h")
        ip("link", "set", f"{tag}h", "up")
        ip("-n", router, "addr", "add", f"10.231.{third}.2/24", "dev", f"{tag}r0")
        ip("-n", router, "link", "set", f"{tag}r0", "up")
        for i, replica in enumerate(replicas, start=1):  # the router → each replica: a veth pair between them
            net = f"10.231.{third + i}"
            ip(
                "-n",
                router,
                "link",
                "add",
                f"{tag}r{i}",
                "type",
                "veth",
                "peer",
                "name",
                f"{tag}w{i}",
                "netns",
                replica,
            )
            ip("-n", router, "addr", "add", f"{net}.1/24", "dev", f"{tag}r{i}")
            ip("-n", router, "link", "set", f"{tag}r{i}", "up")
            ip("-n", replica, "addr", "add", f"{net}.2/24", "dev", f"{tag}w{i}")
            ip("-n", replica, "link", "set", f"{tag}w{i}", "up")
        yield Hosts(router, replicas, f"10.231.{third}.2", (f"10.231.{third + 1}.2", f"10.231.{third + 2}.2"))
    finally:
        for name in made:  # deleting a namespace deletes its veth ends, and so their peers
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", f"{tag}h"], capture_output=True, timeout=10)


def in_ns(name: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", name)


def pid_answering(client: Client, **body) -> int:
    return client.invoke({"models": ["M"], **body})["pid"]


def test_replicas_on_separate_hosts_over_mutual_tls(tmp_path):
    with contextlib.ExitStack() as stack:
        hosts = stack.enter_context(namespaces())
        certs: Certs = make_certs(tmp_path, hosts=hosts.replica_ips)
        mutual = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
        mutual += ("--tls-client-ca", str(certs.ca))

        def start_replica(index: int, model: str = "M", port: str = PORT):
            host = ("--host", hosts.replica_ips[index], "--port", port)
            return stack.enter_context(
                worker(GRAPH, "--model", model, *host, *mutual, prefix=in_ns(hosts.replicas[index]))
            )

        replicas = [start_replica(0), start_replica(1)]
        tokens = start_replica(1, "tokens", "50053")
        started = [replica.process.pid for replica in (*replicas, tokens)]
        addresses = ",".join(f"{address}:{PORT}" for address in hosts.replica_ips)
        router = stack.enter_context(
            serve(
                GRAPH,
                *("--host", hosts.router_ip, "--remote", f"M={addresses}"),
                *("--remote", f"tokens={hosts.replica_ips[1]}:50053"),
                *("--worker-tls-ca", str(certs.ca), "--worker-tls-cert", str(certs.client_cert)),
                *("--worker-tls-key", str(certs.client_key)),
                prefix=in_ns(hosts.router),
            )
        )
        started.append(router.process.pid)
        client = stack.enter_context(Client(router.address, timeout=20))

        with ThreadPoolExecutor(4) as pool:  # calls spread over both hosts
            assert set(pool.map(lambda _: pid_answering(client, sleep=0.05), range(12))) == {
                replica.process.pid for replica in replicas
            }

        stream = client.stream({"models": ["tokens"], "n": 10_000, "delay": 0.02, "stopped": str(tmp_path / "stop")})
        assert [next(stream)["token"] for _ in range(3)] == [0, 1, 2]  # a stream crosses the hop...
        stream.close()  # ...and a cancel stops the generator on the other host
        deadline = time.monotonic() + 5
        while not (tmp_path / "stop").exists():
            assert time.monotonic() < deadline, "the worker's generator was not closed"
            time.sleep(0.05)

        with ThreadPoolExecutor(4) as pool:  # a host's worker dies: only its calls fail
            calls = [pool.submit(pid_answering, client, sleep=2) for _ in range(4)]
            deadline = time.monotonic() + 10
            while {row["name"]: row["in_flight"] for row in client.stats()}["M"] != 4:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.2)
            replicas[0].process.kill()
            outcomes = []
            for call in calls:
                try:
                    outcomes.append(call.result(timeout=10))
                except sg.Unavailable:
                    outcomes.append(0)
        assert sorted(outcomes) == [0, 0, replicas[1].process.pid, replicas[1].process.pid]
        assert {pid_answering(client) for _ in range(8)} == {replicas[1].process.pid}

        replicas[0] = start_replica(0)  # back on the same address: back in rotation
        started.append(replicas[0].process.pid)
        deadline = time.monotonic() + 10
        while replicas[0].process.pid not in {pid_answering(client) for _ in range(4)}:
            assert time.monotonic() < deadline, router.log()
            time.sleep(0.2)
    assert wait_gone(started, 5.0) == set()
