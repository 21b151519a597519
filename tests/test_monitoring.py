"""Model endpoint monitoring: Prometheus metrics scraped from a served graph, per-call records, request ids,
`servegraph stats`, Triton's ModelStatistics, and sinks that never slow the request path."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import serve
from tiny_llm import build_tiny_llm

import servegraph as sg
from servegraph import codec
from servegraph.clients import AsyncClient, Client
from servegraph.serving.monitoring import RecordSink
from servegraph.serving.router import Router
from servegraph.v1 import graph_pb2, graph_pb2_grpc

METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")
WAIT = 20.0
"""Seconds any polling loop here may wait before the test fails."""


# -- helpers ------------------------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the metrics page, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def all_codes(samples: dict, endpoint: str) -> float:
    """An endpoint's calls, whatever their outcome."""
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "servegraph_endpoint_requests_total" and ("endpoint", endpoint) in labels
    )


def poll(check, what: str, timeout: float = WAIT, every: float = 0.05):
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def read_records(path: Path) -> list[dict]:
    """Every line of the records file; each must be one valid JSON object."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]


def request(body, request_id: str = "") -> graph_pb2.InvokeRequest:
    message = graph_pb2.InvokeRequest(id=request_id)
    codec.to_value(body, message.body, message.tensors)
    return message


# -- the served graph -------------------------------------------------------------------------------------


class Served:
    def __init__(self, router, records: Path):
        self.router = router
        self.address = router.address
        self.records = records
        match = METRICS_LINE.search(router.log())
        assert match, router.log()
        self.metrics = match[1]

    def scrape(self) -> dict:
        return scrape(self.metrics)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("transformers")
    tiny = build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))
    records = tmp_path_factory.mktemp("records") / "monitored.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINY_LLM_DIR", str(tiny))
        with serve(
            "served_monitoring:monitored", "--metrics-port", "0", "--records", str(records), timeout=90
        ) as router:
            yield Served(router, records)


@pytest.fixture(scope="module")
def client(served):
    with Client(served.address, timeout=30) as client:
        yield client


def test_metrics_count_every_call_per_endpoint_per_proxy_and_per_code(served, client):
    before = served.scrape()
    for _ in range(3):
        client.invoke({"models": ["echo"]})
    for _ in range(3):
        assert client.invoke({"models": ["finance"]})["endpoint"] == "finance"
    for _ in range(2):
        assert client.invoke({"models": ["legal"]})["endpoint"] == "legal"
    for _ in range(2):
        client.invoke({"models": ["worker"]})
    both = client.invoke({"models": ["echo", "worker"]})
    assert set(both) == {"echo", "worker"}
    for _ in range(2):
        with pytest.raises(sg.ServingError, match="bad input") as failed:
            client.invoke({"models": ["failing"], "x": 1})
        assert failed.value.code == "INTERNAL"
    with pytest.raises(sg.InvalidArgument, match="cannot take"):
        client.invoke({"models": ["rejecting"], "x": 2})
    with pytest.raises(sg.ServingError, match="pre refused"):
        client.invoke({"models": ["echo"], "fail_pre": True})
    after = served.scrape()

    expected = {
        ("echo", "OK"): 4,
        ("worker", "OK"): 3,
        ("finance", "OK"): 3,
        ("legal", "OK"): 2,
        ("failing", "INTERNAL"): 2,
        ("rejecting", "INVALID_ARGUMENT"): 1,
    }
    for (endpoint, code), count in expected.items():
        assert delta(before, after, "servegraph_endpoint_requests_total", endpoint=endpoint, code=code) == count
    for endpoint in ("echo", "worker", "finance", "legal", "failing", "rejecting"):
        calls = sum(count for (name, _), count in expected.items() if name == endpoint)
        assert delta(before, after, "servegraph_endpoint_latency_seconds_count", endpoint=endpoint) == calls
        assert value(after, "servegraph_endpoint_in_flight", endpoint=endpoint) == 0
    for endpoint in ("echo", "worker", "finance", "legal", "failing", "rejecting"):  # and no other codes
        calls = sum(count for (name, _), count in expected.items() if name == endpoint)
        assert all_codes(after, endpoint) - all_codes(before, endpoint) == calls
    assert value(after, "servegraph_endpoint_requests_total", endpoint="assistant", code="OK") == 0, (
        "calls through proxies count for the proxies, not the shared model"
    )

    events = 3 + 3 + 2 + 2 + 1 + 2 + 1 + 1
    assert delta(before, after, "servegraph_step_latency_seconds_count", step="pre") == events
    assert delta(before, after, "servegraph_step_failures_total", step="pre") == 1
    assert delta(before, after, "servegraph_step_latency_seconds_count", step="runner") == events - 1
    assert delta(before, after, "servegraph_step_failures_total", step="runner") == 3
    le_inf = value(after, "servegraph_step_latency_seconds_bucket", step="runner", le="+Inf")
    assert le_inf == value(after, "servegraph_step_latency_seconds_count", step="runner")

    rows = {row["name"]: row for row in client.stats()}
    assert rows["failing"]["failures"] == value(
        after, "servegraph_endpoint_requests_total", endpoint="failing", code="INTERNAL"
    )
    assert rows["finance"]["requests"] == value(
        after, "servegraph_endpoint_requests_total", endpoint="finance", code="OK"
    )
    assert rows["finance"]["p99_ms"] >= rows["finance"]["p50_ms"] > 0


def test_tokens_follow_llm_usage_and_streams_give_time_to_first_token(served, client):
    before = served.scrape()
    usages = [
        client.invoke({"models": ["llm"], "q": question})["usage"] for question in ("Stocks?", "Bonds and rates?")
    ]
    for question in ("The match?", "Goals"):
        *text, final = client.stream({"models": ["llm"], "q": question})
        assert text and all(isinstance(chunk, str) for chunk in text)
        usages.append(final["usage"])
    for n in (2, 4):
        assert len(list(client.stream({"models": ["tokens"], "n": n}))) == n
    after = served.scrape()

    prompt = sum(usage["prompt_tokens"] for usage in usages)
    completion = sum(usage["completion_tokens"] for usage in usages)
    assert prompt > 0 and completion > 0
    assert delta(before, after, "servegraph_endpoint_tokens_total", endpoint="llm", direction="in") == prompt
    assert delta(before, after, "servegraph_endpoint_tokens_total", endpoint="llm", direction="out") == completion
    assert delta(before, after, "servegraph_endpoint_requests_total", endpoint="llm", code="OK") == 4
    ttft = "servegraph_endpoint_time_to_first_token_seconds_count"
    assert delta(before, after, ttft, endpoint="llm") == 2, "only streams have a first token"
    assert delta(before, after, ttft, endpoint="tokens") == 2
    assert delta(before, after, "servegraph_endpoint_requests_total", endpoint="tokens", code="OK") == 2
    assert delta(before, after, "servegraph_endpoint_tokens_total", endpoint="tokens", direction="out") == 0

    rows = {row["name"]: row for row in client.stats()}
    assert rows["llm"]["tokens_in"] == value(after, "servegraph_endpoint_tokens_total", endpoint="llm", direction="in")
    assert rows["llm"]["tokens_out"] == value(
        after, "servegraph_endpoint_tokens_total", endpoint="llm", direction="out"
    )


def test_request_ids_come_back_in_the_response_and_trailing_metadata(served):
    with grpc.insecure_channel(served.address) as channel:
        stub = graph_pb2_grpc.GraphStub(channel)
        by_header, call = stub.Invoke.with_call(
            request({"models": ["echo"]}), metadata=(("x-request-id", "meta-1"),), timeout=30
        )
        assert by_header.id == "meta-1" and ("x-request-id", "meta-1") in call.trailing_metadata()
        by_field, call = stub.Invoke.with_call(request({"models": ["worker"]}, "field-1"), timeout=30)
        assert by_field.id == "field-1" and ("x-request-id", "field-1") in call.trailing_metadata()
        fresh, call = stub.Invoke.with_call(request({"models": ["echo"]}), timeout=30)
        assert fresh.id and ("x-request-id", fresh.id) in call.trailing_metadata()

        stream = stub.InvokeStream(
            request({"models": ["tokens"], "n": 3}), metadata=(("x-request-id", "stream-1"),), timeout=30
        )
        assert [response.id for response in stream] == ["stream-1"] * 3
        assert ("x-request-id", "stream-1") in stream.trailing_metadata()

        with pytest.raises(grpc.RpcError) as failed:
            stub.Invoke(request({"models": ["failing"], "x": 3}), metadata=(("x-request-id", "err-meta"),), timeout=30)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert failed.value.details().endswith("[request err-meta]")
        assert ("x-request-id", "err-meta") in failed.value.trailing_metadata()

        with pytest.raises(grpc.RpcError) as failed:
            list(stub.InvokeStream(request({"models": ["tokens"], "n": "many"}, "err-stream"), timeout=30))
        assert failed.value.details().endswith("[request err-stream]")

    with Client(served.address, timeout=30) as client, pytest.raises(sg.InvalidArgument) as rejected:
        client.invoke({"models": ["rejecting"], "x": 4}, id="err-client")
    assert "cannot take 4" in str(rejected.value) and str(rejected.value).endswith("[request err-client]")


def test_records_one_json_line_per_model_call_with_the_request_id(served, client):
    big = "x" * 50_000
    client.invoke({"models": ["echo"], "n": 1}, id="rec-echo")
    client.invoke({"models": ["finance"]}, id="rec-finance")
    client.invoke({"models": ["echo", "legal"]}, id="rec-both")
    client.invoke({"models": ["echo"], "blob": big}, id="rec-big")
    assert len(list(client.stream({"models": ["tokens"], "n": 2}, id="rec-stream"))) == 2
    with pytest.raises(sg.ServingError):
        client.invoke({"models": ["failing"], "x": 5}, id="rec-fail")
    with grpc.insecure_channel(served.address) as channel:
        graph_pb2_grpc.GraphStub(channel).Invoke(
            request({"models": ["worker"]}), metadata=(("x-request-id", "rec-meta"),), timeout=30
        )

    def settled():
        samples = served.scrape()
        calls = sum(v for (name, _), v in samples.items() if name == "servegraph_endpoint_requests_total")
        try:
            records = read_records(served.records)
        except ValueError:  # a line being written
            return None
        return records if len(records) == calls else None

    records = poll(settled, "one record per model call counted by the metrics")
    assert value(served.scrape(), "servegraph_records_dropped_total") == 0
    by_id: dict[str, list[dict]] = {}
    for record in records:
        assert set(record) >= {"graph", "endpoint", "step", "labels", "request_id", "inputs", "outputs"}
        assert set(record) >= {"latency_ms", "usage", "error"}
        assert record["graph"] == "monitored" and record["step"] == "runner" and record["request_id"]
        by_id.setdefault(record["request_id"], []).append(record)

    (echo,) = by_id["rec-echo"]
    assert echo["endpoint"] == "echo" and echo["labels"] == {"tier": "gold"}
    assert echo["inputs"] == echo["outputs"] == {"models": ["echo"], "n": 1}
    assert echo["error"] is None and echo["latency_ms"] >= 0
    (finance,) = by_id["rec-finance"]
    assert finance["endpoint"] == "finance" and finance["outputs"]["endpoint"] == "finance"
    assert sorted(record["endpoint"] for record in by_id["rec-both"]) == ["echo", "legal"]
    (large,) = by_id["rec-big"]
    for field in ("inputs", "outputs"):
        assert isinstance(large[field], str) and len(large[field]) <= 2001 and large[field].endswith("…")
        assert '"blob":"xxxx' in large[field], "a JSON rendering, cut short"
    (stream,) = by_id["rec-stream"]
    assert stream["endpoint"] == "tokens" and stream["outputs"]["i"] == 1, "a stream records its last chunk"
    (failure,) = by_id["rec-fail"]
    assert failure["endpoint"] == "failing" and failure["outputs"] is None
    assert failure["error"] == "ValueError: bad input 5"
    (meta,) = by_id["rec-meta"]
    assert meta["endpoint"] == "worker" and meta["outputs"]["model"] == "worker"
    llm = [record for record in records if record["endpoint"] == "llm"]
    assert llm and all(record["usage"]["prompt_tokens"] > 0 for record in llm)


def test_in_flight_and_worker_queue_depth_while_a_call_runs(served, client):
    done = threading.Event()

    def slow_call():
        try:
            client.invoke({"models": ["legal"], "sleep": 1.5})
        finally:
            done.set()

    thread = threading.Thread(target=slow_call)
    thread.start()
    try:
        busy = poll(
            lambda: (
                (s := served.scrape())
                and value(s, "servegraph_endpoint_in_flight", endpoint="legal") == 1
                and value(s, "servegraph_worker_queue_depth", worker="assistant") == 1
            ),
            "the slow call to show in flight",
        )
        assert busy
    finally:
        assert done.wait(WAIT)
        thread.join(WAIT)
    after = served.scrape()
    assert value(after, "servegraph_endpoint_in_flight", endpoint="legal") == 0
    assert value(after, "servegraph_worker_queue_depth", worker="assistant") == 0


def test_scraping_while_worker_calls_run_never_fails_a_call(served, client):
    """The scrape reads worker liveness from the metrics thread while the router's loop checks it per call."""
    stop = threading.Event()

    def scrape_until_stopped():
        while not stop.is_set():
            served.scrape()

    scrapers = [threading.Thread(target=scrape_until_stopped) for _ in range(2)]
    for scraper in scrapers:
        scraper.start()
    try:
        for _ in range(300):
            assert client.invoke({"models": ["worker"]})["model"] == "worker"
    finally:
        stop.set()
        for scraper in scrapers:
            scraper.join(WAIT)


def test_a_cancelled_stream_counts_as_cancelled(served, client):
    before = served.scrape()
    chunks = client.stream({"models": ["tokens"], "n": 100, "delay": 0.05})
    assert next(chunks)["i"] == 0 and next(chunks)["i"] == 1
    chunks.close()

    def cancelled():
        samples = served.scrape()
        return delta(before, samples, "servegraph_endpoint_requests_total", endpoint="tokens", code="CANCELLED") == 1

    poll(cancelled, "the cancelled stream to be counted")
    after = served.scrape()
    assert value(after, "servegraph_endpoint_in_flight", endpoint="tokens") == 0
    assert all_codes(after, "tokens") - all_codes(before, "tokens") == 1


def test_stats_command_prints_the_endpoint_table(served, client):
    before = {row["name"]: row for row in client.stats()}
    for _ in range(2):
        client.invoke({"models": ["echo"]})
    with pytest.raises(sg.ServingError):
        client.invoke({"models": ["failing"], "x": 6})
    output = subprocess.run(
        [sys.executable, "-m", "servegraph.cli", "stats", "--address", served.address, "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    header, *lines = output.splitlines()
    assert header.split() == [
        "endpoint",
        "requests",
        "failures",
        "p50",
        "ms",
        "p99",
        "ms",
        "tokens",
        "in",
        "tokens",
        "out",
    ]
    table = {line.split()[0]: line.split()[1:] for line in lines}
    assert int(table["echo"][0]) == before["echo"]["requests"] + 2
    assert int(table["failing"][0]) == int(table["failing"][1]) == before["failing"]["failures"] + 1
    assert set(table) >= {"echo", "worker", "finance", "legal", "failing", "rejecting", "tokens", "llm"}
    rows = {row["name"]: row for row in client.stats()}
    for name, (requests, failures, p50, p99, tokens_in, tokens_out) in table.items():
        row = rows[name]
        assert (int(requests), int(failures)) == (row["requests"], row["failures"]), name
        assert (int(tokens_in), int(tokens_out)) == (row["tokens_in"], row["tokens_out"]), name
        assert 0 <= float(p50) <= float(p99)

    async def async_stats():
        async with AsyncClient(served.address, timeout=10) as aclient:
            return await aclient.stats()

    assert {row["name"]: row["requests"] for row in asyncio.run(async_stats())} == {
        name: row["requests"] for name, row in rows.items()
    }


def test_triton_model_statistics_count_successes_and_failures(served, client):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    triton = grpcclient.InferenceServerClient(url=served.address)
    try:
        before = triton.get_inference_statistics("legal").model_stats[0].inference_stats
        for _ in range(3):
            client.invoke({"models": ["legal"]})
        failing = triton.get_inference_statistics("failing").model_stats[0].inference_stats.fail.count
        with pytest.raises(sg.ServingError):
            client.invoke({"models": ["failing"], "x": 7})
        legal = triton.get_inference_statistics("legal").model_stats[0]
        assert legal.name == "legal"
        assert legal.inference_stats.success.count == before.success.count + 3
        assert legal.inference_stats.fail.count == before.fail.count == 0
        assert legal.inference_count == legal.inference_stats.success.count and legal.last_inference > 0
        assert legal.inference_stats.success.ns > before.success.ns
        assert triton.get_inference_statistics("failing").model_stats[0].inference_stats.fail.count == failing + 1
        x = grpcclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        assert triton.infer("echo", [x], request_id="v2-id").get_response().id == "v2-id"
        triton.infer("echo", [x])

        def v2_records():
            try:
                records = read_records(served.records)
            except ValueError:  # a line being written
                return None
            wanted = {"inputs": ["<float32 array [2]>"]}
            found = [r["request_id"] for r in records if r["endpoint"] == "echo" and r["inputs"] == wanted]
            return found if len(found) == 2 else None

        with_id, without_id = poll(v2_records, "records of the V2 calls")
        assert with_id == "v2-id" and without_id and without_id != "v2-id", "V2 calls without an id get one"
        everything = {stats.name for stats in triton.get_inference_statistics().model_stats}
        assert everything >= {"echo", "worker", "finance", "legal", "failing", "tokens", "llm"}
        assert "monitored" not in everything, "the graph is not a model endpoint"
    finally:
        triton.close()


def test_worker_restart_and_up_gauge_after_sigkill(served, client):
    before = served.scrape()
    assert value(before, "servegraph_worker_up", worker="worker") == 1
    assert value(before, "servegraph_worker_restarts_total", worker="worker") == 0
    assert value(before, "servegraph_worker_up", worker="assistant") == 1
    pid = client.invoke({"models": ["worker"]})["pid"]
    os.kill(pid, signal.SIGKILL)
    seen = []

    def back():
        samples = served.scrape()
        seen.append(value(samples, "servegraph_worker_up", worker="worker"))
        return value(samples, "servegraph_worker_restarts_total", worker="worker") == 1 and seen[-1] == 1

    poll(back, "the killed worker to come back")
    assert 0 in seen, "the worker showed as down before it came back"
    assert client.invoke({"models": ["worker"]})["pid"] != pid
    after = served.scrape()
    assert value(after, "servegraph_worker_restarts_total", worker="assistant") == 0
    assert value(after, "servegraph_worker_restarts_total", worker="llm") == 0


# -- in-process router: sinks on the real request path --------------------------------------------------


def watched_graph() -> sg.Graph:
    from served_monitoring import build_watched

    return build_watched()


async def run_router(graph: sg.Graph, scenario, **options):
    router = Router(graph, "127.0.0.1", 0, **options)
    port = await router.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", timeout=10) as aclient:
            return await scenario(router, aclient)
    finally:
        await router.stop(1.0)


def test_a_slow_callable_sink_does_not_slow_requests_and_records_only_monitored_models():
    received: list[dict] = []
    release = threading.Event()

    def slow_sink(record):
        release.wait(0.1)  # 0.1 s per record until released: 60 records would take 6 s
        received.append(record)

    async def scenario(router, aclient):
        await aclient.invoke({"models": ["unwatched"]})  # warm up the channel
        started = time.perf_counter()
        for i in range(60):
            assert await aclient.invoke({"models": ["watched"], "i": i}, id=f"w-{i}") == {"models": ["watched"], "i": i}
        elapsed = time.perf_counter() - started
        for _ in range(5):
            await aclient.invoke({"models": ["unwatched"]})
        pending = len(received)
        release.set()
        return elapsed, pending, router.metrics_port

    elapsed, pending, metrics_port = asyncio.run(run_router(watched_graph(), scenario, records=slow_sink))
    assert elapsed < 3.0, f"60 calls took {elapsed:.2f}s behind a 0.1 s/record sink"
    assert pending < 60
    assert metrics_port is None, "no metrics port unless asked"
    assert [record["request_id"] for record in received] == [f"w-{i}" for i in range(60)]
    assert {record["endpoint"] for record in received} == {"watched"}
    assert received[0]["graph"] == "watched" and received[0]["inputs"] == {"models": ["watched"], "i": 0}


def test_a_full_sink_queue_drops_records_and_counts_them():
    release = threading.Event()
    received: list[dict] = []

    def stuck_sink(record):
        release.wait(WAIT)
        received.append(record)

    async def scenario(router, aclient):
        router.monitor.records.close()
        sink = router.monitor.records = RecordSink(stuck_sink, capacity=4)
        started = time.perf_counter()
        for i in range(20):
            await aclient.invoke({"models": ["watched"], "i": i})
        elapsed = time.perf_counter() - started
        samples = await asyncio.to_thread(scrape, f"http://127.0.0.1:{router.metrics_port}/metrics")
        dropped = value(samples, "servegraph_records_dropped_total")
        requests = value(samples, "servegraph_endpoint_requests_total", endpoint="watched", code="OK")
        release.set()
        return sink, elapsed, dropped, requests

    sink, elapsed, dropped, requests = asyncio.run(
        run_router(watched_graph(), scenario, records=stuck_sink, metrics_port=0)
    )
    assert elapsed < 3.0 and requests == 20
    # the writer holds what it took (at most the 4 of a full queue) while 4 more wait: the rest are dropped
    assert 20 - 2 * 4 <= dropped <= 20 - 4
    assert sink.dropped == dropped and sink.written == len(received) == 20 - dropped


def test_a_record_that_cannot_be_rendered_is_dropped_and_the_call_succeeds():
    from served_monitoring import build_odd

    received: list[dict] = []

    async def scenario(router, aclient):
        answer = await aclient.invoke({"x": 1})
        await asyncio.to_thread(router.monitor.records.close)
        return answer, router.monitor.records.dropped

    answer, dropped = asyncio.run(run_router(build_odd(), scenario, records=received.append))
    assert answer == {"a-b": 1} and dropped == 1 and received == []


@pytest.mark.parametrize("taken", ["grpc", "metrics"])
def test_a_router_that_cannot_bind_leaves_no_port_or_sink_thread_behind(taken, tmp_path):
    from servegraph.serving.router import PortUnavailable

    def listening(port: int) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"port": port, "metrics_port": 0} if taken == "grpc" else {"port": 0, "metrics_port": port}

        async def start() -> Router:
            router = Router(watched_graph(), "127.0.0.1", records=tmp_path / "records.jsonl", **ports)
            with pytest.raises(PortUnavailable, match=f"127.0.0.1:{port}"):
                await router.start()
            return router

        router = asyncio.run(start())
    assert not router.monitor.records._thread.is_alive(), "the record sink's thread is stopped"
    if taken == "grpc":
        assert not listening(router.metrics_port), "the metrics port, bound first, is released"
    else:
        assert router.port is None, "gRPC never bound a port"


def test_records_are_strict_json_whatever_the_model_returns(tmp_path):
    from served_monitoring import build_unusual

    records = tmp_path / "unusual.jsonl"

    async def scenario(router, aclient):
        assert await aclient.invoke({}, id="odd") == {"ok": True}
        assert await aclient.invoke({"big": True}, id="big") == {"ok": True}
        await asyncio.to_thread(router.monitor.records.close)

    asyncio.run(run_router(build_unusual(), scenario, records=records))

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    lines = records.read_text().splitlines()
    odd, big = (json.loads(line, parse_constant=no_constants) for line in lines)
    assert odd["request_id"] == "odd"
    assert odd["outputs"] == {"score": None, "7": "seven", "scores": "<float32 array [3]>"}
    assert big["request_id"] == "big" and big["outputs"] == {"big": 2**70}


def test_records_default_to_a_file_per_graph_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def scenario(router, aclient):
        for i in range(3):
            await aclient.invoke({"models": ["watched"], "i": i}, id=f"d-{i}")
        await aclient.invoke({"models": ["unwatched"]})
        await aclient.invoke({"models": ["watched", "unwatched"]}, id="d-both")

    asyncio.run(run_router(watched_graph(), scenario))
    records = read_records(tmp_path / "servegraph-records" / "watched.jsonl")
    assert [(record["request_id"], record["endpoint"]) for record in records] == [
        ("d-0", "watched"),
        ("d-1", "watched"),
        ("d-2", "watched"),
        ("d-both", "watched"),
    ]


def test_no_records_file_unless_monitoring_is_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    graph = sg.Graph("quiet")
    graph.to(sg.ModelRunnerStep(name="runner")).respond().add_model("m", "served_monitoring.Echo", "naive")

    async def scenario(router, aclient):
        assert [(row["name"], row["requests"]) for row in await aclient.stats()] == [("m", 0)], "uncalled: zeros"
        assert await aclient.invoke({"a": 1}) == {"a": 1}
        assert [(row["name"], row["requests"]) for row in await aclient.stats()] == [("m", 1)]
        return router.monitor.records

    assert asyncio.run(run_router(graph, scenario)) is None
    assert list(tmp_path.iterdir()) == []
