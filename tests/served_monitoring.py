"""Graphs for the monitoring tests (tests/test_monitoring.py).

`monitored` is served with ``servegraph serve served_monitoring:monitored --metrics-port 0 --records PATH``;
the tiny LLM's directory comes from $TINY_LLM_DIR (set by the test before serving). `watched` runs
in-process (models in the router only) with monitoring on one model of two.
"""

from __future__ import annotations

import os

import model_zoo
import numpy as np

import servegraph as sg

TINY = os.environ.get("TINY_LLM_DIR", "")


class Rejecting(sg.Model):
    """Fails with INVALID_ARGUMENT (a ServingError keeps its code)."""

    def predict(self, body):
        raise sg.InvalidArgument(f"cannot take {body.get('x')!r}")


class Echo(sg.Model):
    """Returns the body as it came (a large body stays large: the records truncate it)."""

    def predict(self, body):
        return body


class TupleKeys(sg.Model):
    """A result that JSON cannot render (tuple keys); the next step makes it answerable."""

    def predict(self, body):
        return {("a", "b"): body.get("x")}


class Unusual(sg.Model):
    """A result with what JSON has no plain word for: NaN, an integer key, an array, a 70-bit integer."""

    def predict(self, body):
        if body.get("big"):
            return {"big": 2**70}
        return {"score": float("nan"), 7: "seven", "scores": np.arange(3, dtype=np.float32)}


def answered(body):
    return {"ok": True}


def string_keys(body):
    return {"-".join(key): value for key, value in body.items()}


def pre(body):
    """A plain step before the models; ``fail_pre`` makes it raise."""
    if body.get("fail_pre"):
        raise ValueError("pre refused the event")
    return body


def build_monitored() -> sg.Graph:
    """Models in the router and in workers, two proxies on one shared model, a streaming model and a tiny
    LLM, all behind a selector that runs the endpoints named in ``body["models"]``; monitoring on the graph."""
    graph = sg.Graph("monitored", monitoring=True)
    graph.add_shared_model("assistant", model_zoo.Shared, "dedicated_process")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector="model_zoo.PickByKey")
    runner.add_model("echo", Echo, "naive", labels={"tier": "gold"})
    runner.add_model("worker", model_zoo.Echo, "dedicated_process")
    runner.add_model("failing", model_zoo.Failing, "naive")
    runner.add_model("rejecting", Rejecting, "naive")
    runner.add_model("tokens", model_zoo.Tokens, "thread_pool")
    runner.add_shared_model_proxy("finance", "prompts/finance.txt", shared_model_name="assistant")
    runner.add_shared_model_proxy("legal", "prompts/legal.txt", shared_model_name="assistant")
    runner.add_model(
        "llm",
        sg.LLModel,
        "dedicated_process",
        model_artifact=sg.LLMPromptArtifact(
            model_artifact=TINY,
            prompt_template=[{"role": "user", "content": "{q}"}],
            invocation_config={"max_tokens": 8},
        ),
    )
    graph.to(name="pre", handler=pre).to(runner).respond()
    return graph


def build_watched() -> sg.Graph:
    """Two models in the router; only `watched` asks for records."""
    graph = sg.Graph("watched")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector="model_zoo.PickByKey")
    runner.add_model("watched", Echo, "naive", monitoring=True)
    runner.add_model("unwatched", Echo, "naive")
    graph.to(runner).respond()
    return graph


def build_odd() -> sg.Graph:
    graph = sg.Graph("odd", monitoring=True)
    graph.to(sg.ModelRunnerStep(name="runner")).add_model("tuples", TupleKeys, "naive")
    graph.steps["runner"].to(name="keys", handler=string_keys).respond()
    return graph


def build_unusual() -> sg.Graph:
    graph = sg.Graph("unusual", monitoring=True)
    graph.to(sg.ModelRunnerStep(name="runner")).add_model("unusual", Unusual, "naive")
    graph.steps["runner"].to(name="answered", handler=answered).respond()
    return graph


monitored = build_monitored
