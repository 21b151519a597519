"""A small graph for the TLS and token tests: one naive V2 model, `serve("served_tls:graph", ...)`."""

from __future__ import annotations

import numpy as np

import servegraph as sg


class Doubler(sg.Model):
    def predict(self, body):
        return {"doubled": np.asarray(body["inputs"][0]) * 2}


graph = sg.Graph("secure")
models = sg.ModelRunnerStep(name="models")
models.add_model("doubler", Doubler, "naive")
graph.to(models).respond()
