"""Graphs of models for the model and worker tests: built by the tests and served with
`servegraph serve served_models:<name>` (models and selectors are named by import path where a test
wants that form; worker processes import them from tests/ by path)."""

from __future__ import annotations

import model_zoo

import servegraph as sg

IN_ROUTER = ("naive", "asyncio", "thread_pool")
IN_WORKERS = ("process_pool", "dedicated_process")
MECHANISMS = IN_ROUTER + IN_WORKERS
PROXIES = {"finance": "prompts/finance.txt", "legal": "prompts/legal.txt", "support": "prompts/support.txt"}


def build_zoo(pool_size: int = 2) -> sg.Graph:
    """One endpoint per mechanism (named after it) plus three proxies to one shared model.

    The selector (by import path) runs the endpoints named in ``body["models"]``, or all of them.
    """
    graph = sg.Graph("zoo")
    graph.add_shared_model("assistant", "model_zoo.Shared", "dedicated_process")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector="model_zoo.PickByKey")
    for mechanism in MECHANISMS:
        model = model_zoo.AsyncEcho if mechanism == "asyncio" else model_zoo.Echo
        runner.add_model(mechanism, model, execution_mechanism=mechanism, tag=f"tag-{mechanism}")
    for name, uri in PROXIES.items():
        runner.add_shared_model_proxy(
            name, sg.ModelArtifact(uri, prompt=f"You are a {name} assistant"), shared_model_name="assistant"
        )
    runner.configure_pool_resource(max_processes=pool_size)
    graph.to(runner).respond()
    return graph


CRASHY_WORKERS = ("victim", "pooled", "helper", "printer", "bounded", "tokens")
"""Endpoints of `crashy` that run in worker processes of their own (a model reports its pid)."""


def build_crashy() -> sg.Graph:
    """Slow models in a dedicated worker, in a one-process pool and behind a proxy; a model that prints,
    one with a timeout, one that streams. The selector is an instance."""
    graph = sg.Graph("crashy")
    graph.add_shared_model("assistant", model_zoo.Shared, "dedicated_process")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector=model_zoo.PickByKey())
    runner.add_model("victim", model_zoo.Slow, execution_mechanism="dedicated_process")
    runner.add_model("pooled", model_zoo.Slow, execution_mechanism="process_pool")
    runner.add_shared_model_proxy("helper", "prompts/helper.txt", shared_model_name="assistant")
    runner.add_model("printer", model_zoo.Printer, execution_mechanism="dedicated_process")
    runner.add_model("bounded", model_zoo.Slow, execution_mechanism="dedicated_process", timeout=0.5)
    runner.add_model("tokens", model_zoo.Tokens, execution_mechanism="dedicated_process")
    runner.configure_pool_resource(max_processes=1)
    graph.to(runner).respond()
    return graph


def build_lifecycle() -> sg.Graph:
    """Worker models for supervision: a sync sleeper, one with a 1 s timeout, an async one that serves
    a call at a time."""
    graph = sg.Graph("lifecycle")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector=model_zoo.PickByKey())
    runner.add_model("slow", model_zoo.Slow, execution_mechanism="dedicated_process")
    runner.add_model("hung", model_zoo.Slow, execution_mechanism="dedicated_process", timeout=1.0)
    runner.add_model("serial", model_zoo.AsyncSerial, execution_mechanism="dedicated_process")
    graph.to(runner).respond()
    return graph


def build_draining() -> sg.Graph:
    """For shutdown: a sync and an async sleeper and a model that blocks its event loop, each in a
    worker of its own."""
    graph = sg.Graph("draining")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector=model_zoo.PickByKey())
    runner.add_model("slow", model_zoo.Slow, execution_mechanism="dedicated_process")
    runner.add_model("async_slow", model_zoo.AsyncSlow, execution_mechanism="dedicated_process")
    runner.add_model("blocking", model_zoo.Blocking, execution_mechanism="dedicated_process")
    graph.to(runner).respond()
    return graph


def build_tokens() -> sg.Graph:
    graph = sg.Graph("tokens")
    graph.to(sg.ModelRunnerStep(name="runner")).respond().add_model(
        "tokens", model_zoo.Tokens, execution_mechanism="dedicated_process"
    )
    return graph


def build_bad_load() -> sg.Graph:
    graph = sg.Graph("bad-load")
    runner = sg.ModelRunnerStep(name="runner")
    runner.add_model("fine", model_zoo.Echo, execution_mechanism="naive")
    runner.add_model("fine_worker", model_zoo.Echo, execution_mechanism="dedicated_process")
    runner.add_model("broken", model_zoo.BadLoad, execution_mechanism="dedicated_process")
    graph.to(runner).respond()
    return graph


zoo = build_zoo
crashy = build_crashy
tokens = build_tokens
lifecycle = build_lifecycle
draining = build_draining
bad_load = build_bad_load


def build_batching() -> sg.Graph:
    """The same batching model in a worker, in the router's thread pool, and a bounded-queue model."""
    graph = sg.Graph("batching")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector="model_zoo.PickByKey")
    for mechanism in ("dedicated_process", "thread_pool"):
        runner.add_model(
            mechanism,
            model_zoo.Batched,
            execution_mechanism=mechanism,
            max_batch_size=4,
            max_batch_delay_ms=100,
            batch_seconds=0.05,
        )
    runner.add_model(
        "tensors", model_zoo.BatchedTensors, execution_mechanism="dedicated_process", max_batch_size=8,
        max_batch_delay_ms=50,
    )  # fmt: skip
    runner.add_model("bounded", model_zoo.Sleepy, execution_mechanism="dedicated_process", max_queued=2)
    graph.to(runner).respond()
    return graph


batching = build_batching
