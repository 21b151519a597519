"""Graphs for tests/test_manifests.py: each placement the Kubernetes manifests must express."""

from __future__ import annotations

import servegraph as sg

# Every kind of placement at once; the name needs sanitizing into DNS labels.
fraud = sg.Graph("Fraud_Detection")
fraud.add_shared_model("llm", "model_zoo.Shared", "dedicated_process")
models = sg.ModelRunnerStep(name="models", model_runner_selector=None)
models.add_model("big_model", "model_zoo.Echo", "dedicated_process", device="cuda:0", replicas=2)
models.add_model("fast", "model_zoo.Echo", "thread_pool")
models.add_model("crunch_a", "model_zoo.Echo", "process_pool")
models.add_model("crunch_b", "model_zoo.Echo", "process_pool")
models.add_shared_model_proxy("finance", shared_model_name="llm")
models.add_shared_model_proxy("sport", shared_model_name="llm")
models.configure_pool_resource(max_processes=3)
fraud.to(models).respond()

# A pool sized by a model's replicas parameter, which wins over max_processes.
pooled = sg.Graph("pooled")
pool = sg.ModelRunnerStep(name="pool", model_runner_selector=None)
pool.add_model("a", "model_zoo.Echo", "process_pool", replicas=4)
pool.add_model("b", "model_zoo.Echo", "process_pool")
pooled.configure_pool_resource(max_processes=2)
pooled.to(pool).respond()

# Nothing in workers: the router alone.
local = sg.Graph("local")
inline = sg.ModelRunnerStep(name="inline")
inline.add_model("echo", "model_zoo.Echo", "naive")
local.to(inline).respond()

# Worker names that differ only in punctuation.
clash = sg.Graph("clash")
both = sg.ModelRunnerStep(name="both", model_runner_selector=None)
both.add_model("a_b", "model_zoo.Echo", "dedicated_process")
both.add_model("a-b", "model_zoo.Echo", "dedicated_process")
clash.to(both).respond()
