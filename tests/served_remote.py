"""Graphs for the remote worker tests: `servegraph worker served_remote:graph --model M` on each replica
host, `servegraph serve served_remote:graph --remote M=...` on the router's."""

from __future__ import annotations

import os
import time
from pathlib import Path

import servegraph as sg


class Replica(sg.Model):
    """Says which process answered; sleeps ``body["sleep"]`` seconds first."""

    def predict(self, body):
        time.sleep(float(body.get("sleep", 0)))
        return {"pid": os.getpid(), "tag": self.get_param("tag")}


class Tokens(sg.Model):
    """Streams ``n`` tokens ``delay`` seconds apart; when closed early, writes ``stopped`` (a file path)."""

    def predict(self, body):
        try:
            for i in range(int(body.get("n", 3))):
                yield {"token": i, "pid": os.getpid()}
                time.sleep(float(body.get("delay", 0)))
        except GeneratorExit:
            if body.get("stopped"):
                Path(body["stopped"]).write_text(str(os.getpid()))
            raise


class ByName(sg.ModelSelector):
    """The models the body names (``{"models": ["M"]}``)."""

    def select(self, event, available_models):
        return event.body["models"]


def build(tag: str = "v1") -> sg.Graph:
    graph = sg.Graph("remote")
    runner = sg.ModelRunnerStep(name="models", model_runner_selector=ByName())
    runner.add_model("M", Replica, "dedicated_process", tag=tag)
    runner.add_model("tokens", Tokens, "dedicated_process")
    runner.add_model("local", Replica, "naive")
    graph.to(runner).respond()
    return graph


graph = build()
other = build(tag="v2")  # the same models, another parameter: another fingerprint

# Every kind of worker, for the names --remote and --model accept.
kinds = sg.Graph("kinds")
kinds.add_shared_model("llm", Replica, "dedicated_process")
kinds_runner = sg.ModelRunnerStep(name="models", model_runner_selector=ByName())
kinds_runner.add_model("big", Replica, "dedicated_process")
kinds_runner.add_model("fast", Replica, "thread_pool")
kinds_runner.add_model("crunch_a", Replica, "process_pool")
kinds_runner.add_model("crunch_b", Replica, "process_pool")
kinds_runner.add_shared_model_proxy("finance", shared_model_name="llm")
kinds.to(kinds_runner).respond()
