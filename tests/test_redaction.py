"""Secret-named model parameters and class arguments never show in Describe, YAML or the plot, while
the worker hosting the model still gets the real value."""

from __future__ import annotations

import json

import graph_steps
import pytest
import served_v2
from servers import serve

import servegraph as sg
from servegraph.clients import Client
from servegraph.redact import MASK, is_secret, redacted

SECRET = "hunter2-do-not-show"


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "OPENAI_API_KEY",
        "apiKey",
        "hf_token",
        "access-token",
        "password",
        "db_passwd",
        "secret",
        "client_secret",
        "credentials",
        "private_key",
        "auth",
        "Authorization",
        "oauth_header",
    ],
)
def test_secret_names(name):
    assert is_secret(name)


@pytest.mark.parametrize("name", ["max_tokens", "tokenizer", "author", "prefix", "timeout", "base_url"])
def test_names_that_are_no_secret(name):
    assert not is_secret(name)


def secret_graph() -> sg.Graph:
    graph = sg.Graph("secrets")
    graph.to(graph_steps.Multiply, name="mul", factor=2, password=SECRET, auth={"token": SECRET, "user": "me"})
    runner = sg.ModelRunnerStep(name="models")
    runner.add_model("m", "served_v2.Doubler", "dedicated_process", api_key=SECRET, max_tokens=5)
    graph["mul"].to(runner).respond()
    return graph


def test_to_yaml_masks_secrets_and_to_dict_keeps_them():
    graph = secret_graph()
    text = graph.to_yaml()
    assert SECRET not in text and "max_tokens: 5" in text and "factor: 2" in text
    shown = sg.Graph.from_yaml(text).to_dict()
    assert shown["steps"]["models"]["models"]["m"]["parameters"]["api_key"] == MASK
    assert shown["steps"]["mul"]["class_args"]["password"] == MASK
    assert shown["steps"]["mul"]["class_args"]["auth"] == MASK
    assert graph.to_dict()["steps"]["models"]["models"]["m"]["parameters"]["api_key"] == SECRET
    assert sg.Graph.from_yaml(graph.to_yaml(with_secrets=True)).to_dict() == graph.to_dict()
    assert SECRET not in graph.plot()


def test_redacted_leaves_step_names_and_the_original_alone():
    spec = {"steps": {"auth_check": {"class_args": {"token": "t", "nested": [{"api_key": "k"}]}}}}
    assert redacted(spec) == {"steps": {"auth_check": {"class_args": {"token": MASK, "nested": [{"api_key": MASK}]}}}}
    assert spec["steps"]["auth_check"]["class_args"]["token"] == "t"


def test_describe_hides_the_api_key_and_the_worker_still_gets_it():
    with serve("served_v2:graph") as served, Client(served.address) as client:
        description = client.describe()
        assert served_v2.API_KEY not in json.dumps(description, default=str)
        parameters = description["spec"]["steps"]["models"]["models"]["remote_doubler"]["parameters"]
        assert parameters == {"api_key": MASK, "max_tokens": 7}
        assert client.invoke(None, path="/v2/models/remote_doubler/secret") == {"api_key": served_v2.API_KEY}
