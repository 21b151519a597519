"""Model endpoint monitoring: Prometheus metrics, per-endpoint statistics and per-request records.

Everything is observed in the router, around each model call, so numbers for models in worker
processes need no scraping of the workers. Records (MLRun's model-monitoring stream, simplified)
go through a bounded queue to a writer thread: a slow or failing sink drops records (counted)
and never slows or fails a request.
"""

from __future__ import annotations

import collections
import json
import logging
import logging.handlers
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from ..dsl.graph import Graph
    from ..hosting.endpoints import ModelEndpoint
    from ..hosting.link import WorkerLink

logger = logging.getLogger("servegraph.monitoring")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RecordSink:
    """Writes JSON records on a thread: to a rotating file, or to a user callable.

    `put` only appends to a bounded buffer (when it is full the record is dropped and counted). The
    thread wakes every `interval` seconds and writes what has accumulated as one batch: a writer that
    woke per record would fight the event loop for the GIL on every call. A record is a dict, or one
    already encoded as a line of JSON (what `Monitor` puts: it encodes once, on the request path).
    """

    def __init__(
        self,
        target: str | Path | Callable[[dict[str, Any]], Any],
        *,
        capacity: int = 10_000,
        interval: float = 0.05,
    ):
        self.capacity = capacity
        self.interval = interval
        self.pending: collections.deque[dict[str, Any] | str] = collections.deque()
        self.refused = 0
        """Records dropped on the request path (queue full, or not renderable); counted by the event loop."""
        self.failed = 0
        """Records the sink could not take; counted by the writer thread (two counters: ``+=`` is not atomic)."""
        self.written = 0
        self._closing = threading.Event()
        self._target: Callable[[dict[str, Any]], Any] | None = None
        self._file: logging.handlers.RotatingFileHandler | None = None
        if callable(target):
            self._target = target
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = logging.handlers.RotatingFileHandler(path, maxBytes=64 << 20, backupCount=3)
            self._file.setFormatter(logging.Formatter("%(message)s"))
        self._thread = threading.Thread(target=self._run, name="servegraph-records", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self.refused + self.failed

    def full(self) -> bool:
        return len(self.pending) >= self.capacity

    def put(self, record: dict[str, Any] | str) -> None:
        if self.full():
            self.refused += 1
        else:
            self.pending.append(record)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending (for up to `timeout` seconds), then stop."""
        self._closing.set()
        self._thread.join(timeout)
        if self._file is not None and not self._thread.is_alive():
            self._file.close()

    def _run(self) -> None:
        while True:
            closing = self._closing.wait(self.interval)
            while self.pending:
                self._write([self.pending.popleft() for _ in range(len(self.pending))])
            if closing:
                return

    def _write(self, batch: list[dict[str, Any] | str]) -> None:
        if self._target is not None:
            for record in batch:
                try:
                    self._target(json.loads(record) if isinstance(record, str) else record)
                    self.written += 1
                except Exception:
                    self.failed += 1
                    logger.exception("monitoring sink failed; record dropped")
            return
        lines = []
        for record in batch:
            try:
                lines.append(record if isinstance(record, str) else _encode(record))
            except Exception:
                self.failed += 1
                logger.exception("monitoring record is not JSON; dropped")
        if lines:
            assert self._file is not None
            self._file.emit(logging.makeLogRecord({"msg": "\n".join(lines)}))
            self.written += len(lines)


def _truncate(value: Any, limit: int) -> Any:
    """A JSON-safe rendering of a body, cut to `limit` characters (arrays shown by dtype and shape)."""
    text = _encode(value)
    return json.loads(text) if len(text) <= limit else text[:limit] + "…"


def _encode(value: Any) -> str:
    """One line of JSON. orjson takes ~1.5 µs where the json module takes ~15 for a typical record, on
    the request path; it renders NaN as null (valid JSON), and refuses integers beyond 64 bits, which
    the json module then writes."""
    try:
        return orjson.dumps(value, default=_describe, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value)


def _describe(value: Any) -> Any:
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"<{value.dtype} array {list(value.shape)}>"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return repr(value)


_ENCODER = json.JSONEncoder(default=_describe)
"""The fallback encoder, built once (``json.dumps(default=...)`` builds a new one per call)."""


def usage_of(result: Any) -> dict[str, Any] | None:
    """An LLM result's usage, wherever the model put it (``{"usage": ...}`` at the top or one down)."""
    if isinstance(result, dict):
        if isinstance(result.get("usage"), dict):
            return result["usage"]
        for value in result.values():
            if isinstance(value, dict) and isinstance(value.get("usage"), dict):
                return value["usage"]
    return None


class Monitor:
    """The router's observer: metrics (own registry), endpoint statistics (kept on the registry's
    entries), and optional records. Worker metrics are read at scrape time from what `workers` returns
    (worker processes and remote replicas, which come and go)."""

    def __init__(
        self,
        graph_name: str,
        *,
        records: RecordSink | None = None,
        workers: Callable[[], Iterable[WorkerLink]] = tuple,
        endpoints: Sequence[ModelEndpoint] = (),
        max_value_chars: int = 2000,
    ):
        self.graph_name = graph_name
        self.records = records
        self.workers = workers
        self.endpoints = endpoints
        self.max_value_chars = max_value_chars
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "servegraph_endpoint_requests", "Model endpoint calls by outcome", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "servegraph_endpoint_latency_seconds", "Model endpoint call latency", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "servegraph_endpoint_in_flight", "Model endpoint calls running", ["endpoint"], registry=r
        )
        self.tokens = Counter(
            "servegraph_endpoint_tokens", "LLM tokens by direction (in: prompt, out: completion)",
            ["endpoint", "direction"], registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "servegraph_endpoint_time_to_first_token_seconds", "Time to the first chunk of a stream", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_latency = Histogram(
            "servegraph_step_latency_seconds", "Step latency", ["step"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.step_failures = Counter("servegraph_step_failures", "Steps that raised", ["step"], registry=r)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r.register(_WorkerCollector(self))

    # -- observations -----------------------------------------------------------------------------
    def _child(self, metric: Any, *labels: str) -> Any:
        """A metric's child for these labels, looked up once: ``labels()`` costs more than the update."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def start(self, endpoint: ModelEndpoint) -> float:
        endpoint.stats.in_flight += 1
        self._child(self.in_flight, endpoint.name).inc()
        return time.perf_counter()

    def finish(
        self,
        model_endpoint: ModelEndpoint,
        started: float,
        *,
        request_id: str,
        inputs: Any,
        result: Any = None,
        error: BaseException | None = None,
        code: str = "OK",
        first_chunk: float | None = None,
    ) -> None:
        elapsed = time.perf_counter() - started
        endpoint = model_endpoint.name
        stats = model_endpoint.stats
        stats.in_flight -= 1
        stats.requests += 1
        stats.last_ms = int(time.time() * 1000)
        stats.latencies.append(elapsed)
        if error is None:
            stats.total_ns += int(elapsed * 1e9)
        else:
            stats.failures += 1
            stats.failed_ns += int(elapsed * 1e9)
        self._child(self.in_flight, endpoint).dec()
        self._child(self.requests, endpoint, code).inc()
        self._child(self.latency, endpoint).observe(elapsed)
        if first_chunk is not None:
            self._child(self.ttft, endpoint).observe(first_chunk - started)
        usage = usage_of(result) if error is None else None
        if usage:
            prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            stats.tokens_in += prompt
            stats.tokens_out += completion
            self._child(self.tokens, endpoint, "in").inc(prompt)
            self._child(self.tokens, endpoint, "out").inc(completion)
        if model_endpoint.record and self.records is not None:
            if self.records.full():  # count the drop before spending anything on the record
                self.records.refused += 1
                return
            entry = {
                "time": time.time(),
                "graph": self.graph_name,
                "endpoint": endpoint,
                "step": model_endpoint.step,
                "labels": model_endpoint.labels,
                "request_id": request_id,
                "inputs": inputs,
                "outputs": None if error is not None else result,
                "latency_ms": round(elapsed * 1e3, 3),
                "usage": usage,
                "error": None if error is None else f"{type(error).__name__}: {error}",
            }
            try:  # encoded now, as the bodies are at this moment; cut each body only when the whole is long
                line = _encode(entry)
                if len(line) > self.max_value_chars:
                    entry["inputs"] = _truncate(inputs, self.max_value_chars)
                    entry["outputs"] = None if error is not None else _truncate(result, self.max_value_chars)
                    line = _encode(entry)
            except Exception:  # a body JSON cannot render (e.g. non-string keys): drop the record, not the call
                self.records.refused += 1
                logger.warning("monitoring record for '%s' could not be rendered; dropped", endpoint, exc_info=True)
            else:
                self.records.put(line)

    def step(self, step: str, elapsed: float, failed: bool) -> None:
        self._child(self.step_latency, step).observe(elapsed)
        if failed:
            self._child(self.step_failures, step).inc()

    def close(self) -> None:
        if self.records is not None:
            self.records.close()


class _WorkerCollector:
    """Worker restarts, liveness and queue depth, and endpoint queue depth, read at scrape time from
    attributes the event loop keeps (no calls into the loop's objects from the HTTP thread)."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def collect(self) -> Iterable[Any]:
        restarts = CounterMetricFamily(
            "servegraph_worker_restarts", "Worker process restarts (a remote replica: reconnections)", labels=["worker"]
        )
        up = GaugeMetricFamily(
            "servegraph_worker_up",
            "1 while the worker (a process, or a remote replica by address) serves",
            labels=["worker"],
        )
        depth = GaugeMetricFamily("servegraph_worker_queue_depth", "Calls sent to the worker, not yet answered",
                                  labels=["worker"])  # fmt: skip
        for worker in self.monitor.workers():
            restarts.add_metric([worker.name], worker.restarts)
            up.add_metric([worker.name], 1 if worker.up else 0)
            depth.add_metric([worker.name], worker.in_flight)
        queued = GaugeMetricFamily(
            "servegraph_endpoint_queue_depth", "Calls waiting for the endpoint's model", labels=["endpoint"]
        )
        for endpoint in self.monitor.endpoints:
            if endpoint.handle is not None:
                queued.add_metric([endpoint.name], endpoint.handle.queued)
        dropped = CounterMetricFamily("servegraph_records_dropped", "Monitoring records dropped (sink full or failed)")
        sink = self.monitor.records
        dropped.add_metric([], sink.dropped if sink else 0)
        return [restarts, up, depth, queued, dropped]


DEFAULT_RECORDS_DIR = Path("servegraph-records")


def records_for(graph: Graph, target: str | Path | Callable[[dict[str, Any]], Any] | None) -> RecordSink | None:
    """The record sink a graph needs: `target` if given, else a file under ./servegraph-records when
    the graph or one of its models asks for monitoring, else none."""
    if target is not None:
        return RecordSink(target)
    models = [shared.model for shared in graph.shared_models.values()]
    models += [endpoint.model for _, endpoint in graph.endpoints().values() if endpoint.model is not None]
    if graph.monitoring or any(model.monitoring for model in models):
        return RecordSink(DEFAULT_RECORDS_DIR / f"{graph.name}.jsonl")
    return None
