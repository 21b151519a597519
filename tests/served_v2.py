"""A graph of V2 models for tritonclient tests: `serve("served_v2:graph")`."""

from __future__ import annotations

import time

import numpy as np

import servegraph as sg

API_KEY = "sk-served-v2-secret"


class Doubler(sg.Model):
    def predict(self, body):
        return np.asarray(body["inputs"][0]) * 2

    def op_secret(self, body):
        """What the worker was given as `api_key` (Describe must not show it)."""
        return {"api_key": self.get_param("api_key")}


class Arith(sg.Model):
    """Declares its tensors: gets them by name, returns them by name."""

    def predict(self, body):
        a, b = body["a"], body["b"]
        return {"sum": a + b, "product": a * b}


class Shout(sg.Model):
    def predict(self, body):
        return {"loud": [item.decode().upper() + "!" for item in body["inputs"][0]]}


class Counter(sg.Model):
    """Streams one output per step, 0.05 s apart."""

    def predict(self, body):
        for i in range(int(np.asarray(body["inputs"][0]).ravel()[0])):
            time.sleep(0.05)
            yield {"step": np.array([i], dtype=np.int64)}

    def op_describe(self, body):
        return {"kind": "counter", "asked": body}


class PickByInputs(sg.ModelSelector):
    """The graph as a V2 model runs the doubler."""

    def select(self, event, available_models):
        return [event.body.get("model", "doubler")] if isinstance(event.body, dict) else ["doubler"]


graph = sg.Graph("v2graph")
models = sg.ModelRunnerStep(name="models", model_runner_selector=PickByInputs)
models.add_model("doubler", Doubler, "naive")
models.add_model("remote_doubler", Doubler, "dedicated_process", api_key=API_KEY, max_tokens=7)
models.add_model(
    "arith",
    Arith,
    "process_pool",
    inputs=[{"name": "a", "datatype": "INT64", "shape": [-1]}, {"name": "b", "datatype": "INT64", "shape": [-1]}],
    outputs=[
        {"name": "sum", "datatype": "INT64", "shape": [-1]},
        {"name": "product", "datatype": "INT64", "shape": [-1]},
    ],
)
models.add_model("shout", Shout, "thread_pool")
models.add_model("counter", Counter, "dedicated_process")
graph.to(models).respond()
graph.configure_pool_resource(max_processes=1)
