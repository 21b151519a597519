"""MLRun's serving-graph semantics, each written from MLRun's documented behaviour with our own graphs.

Names given without a module ("Doubler", "pick_first") are found in this module's globals, as MLRun
finds them in the caller's.
"""

from __future__ import annotations

import json

import pytest

import servegraph as sg


class Tagger:
    """Takes ``**kwargs``: MLRun passes such a class its step's name (and context)."""

    def __init__(self, **kwargs):
        self.name = kwargs["name"]
        self.context = kwargs["context"]

    def do(self, body):
        return [body, self.name]


class Doubler:
    def do(self, body):
        return body * 2


def add_one(body):
    return body + 1


class Bump(sg.Model):
    """Changes its input in place, as much MLRun model code does."""

    def predict(self, body):
        body["n"] += int(self.get_param("by", 1))
        return body


class ByEvent(sg.ModelSelector):
    """Reads the whole event: its body, id, path and headers."""

    seen: list = []

    def select(self, event, available_models):
        ByEvent.seen.append((event.id, event.path, event.headers.get("x-pick")))
        return event.body.get("models")


# -- 1. the event -----------------------------------------------------------------------------------


def test_a_model_selector_gets_the_whole_event():
    ByEvent.seen.clear()
    runner = sg.ModelRunnerStep(name="models", model_runner_selector=ByEvent)
    runner.add_model("a", Bump, execution_mechanism="naive")
    runner.add_model("b", Bump, execution_mechanism="naive", by=2)
    graph = sg.Graph("select")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        assert mock.test("/p", body={"n": 1, "models": ["b"]}, event_id="e1", headers={"x-pick": "b"}) == {
            "n": 3,
            "models": ["b"],
        }
    assert ByEvent.seen == [("e1", "/p", "b")]


def test_a_class_taking_kwargs_gets_its_step_name_and_context():
    graph = sg.Graph("kwargs")
    graph.to(Tagger, name="tag").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body=5) == [5, "tag"]
        assert graph["tag"].name == "tag"


@pytest.mark.parametrize(
    ("body", "content_type", "seen"),
    [
        ({"a": 1}, None, "dict"),
        ("[1, 2]", None, "list"),
        ("[1, 2]", "application/json", "list"),
        (b'{"a": 1}', None, "dict"),
        ("[1, 2]", "text/plain", "str"),
        ("not json", None, "str"),
    ],
)
def test_a_string_body_that_is_json_is_decoded_as_mlruns_mock_does(body, content_type, seen):
    graph = sg.Graph("types")
    graph.to(name="kind", handler=lambda body: type(body).__name__).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body=body, content_type=content_type) == seen


# -- 2. body isolation ------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["naive", "asyncio", "thread_pool"])
def test_each_model_of_a_runner_gets_its_own_copy_of_the_body(mechanism):
    class AsyncBump(Bump):
        async def predict_async(self, body):
            return self.predict(body)

    model = AsyncBump if mechanism == "asyncio" else Bump
    runner = sg.ModelRunnerStep(name="models")
    for by in (1, 10, 100):
        runner.add_model(f"m{by}", model, execution_mechanism=mechanism, by=by)
    graph = sg.Graph("isolated")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"n": 1}) == {"m1": {"n": 2}, "m10": {"n": 11}, "m100": {"n": 101}}


# -- 3. names resolved like MLRun -------------------------------------------------------------------


def test_classes_and_handlers_named_without_a_module_come_from_the_building_code():
    graph = sg.Graph("bare")
    graph.to("Doubler", name="double").to(name="inc", handler="add_one").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body=5) == 11


def test_a_bare_name_may_come_from_the_graphs_namespace():
    graph = sg.Graph("namespaced", namespace={"Triple": type("Triple", (), {"do": lambda self, body: body * 3})})
    graph.to("Triple").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body=2) == 6


def test_bare_model_and_selector_names_resolve_too():
    runner = sg.ModelRunnerStep(name="models", model_runner_selector="ByEvent")
    runner.add_model("a", "Bump", execution_mechanism="naive")
    graph = sg.Graph("bare-models")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"n": 1, "models": ["a"]})["n"] == 2


def test_an_unknown_bare_name_is_a_graph_error_that_says_where_it_looked():
    with pytest.raises(sg.GraphError, match="cannot find class 'Nowhere' where the graph is built"):
        sg.Graph("unknown").to("Nowhere")


def test_expression_handlers_and_import_paths():
    graph = sg.Graph("expr")
    graph.to(name="s1", handler="(event + 1)").to(name="s2", handler="json.dumps").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body=5) == json.dumps(6)
    rebuilt = sg.Graph.from_yaml(graph.to_yaml())
    assert rebuilt["s1"].to_dict()["handler"] == "(event + 1)"
    with rebuilt.to_mock_server() as mock:
        assert mock.test(body=1) == "2"
    with pytest.raises(sg.GraphError, match="not valid Python"):
        sg.Graph("bad").to(name="s", handler="(event +)")


# -- 9. the mock server -----------------------------------------------------------------------------


class NotFoundHere(Exception):
    error_status_code = 404


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ValueError("bad value"), 400, "INTERNAL"),
        (sg.InvalidArgument("bad field"), 400, "INVALID_ARGUMENT"),
        (sg.NotFound("no such thing"), 404, "NOT_FOUND"),
        (NotFoundHere("gone"), 404, "INTERNAL"),
    ],
)
def test_silent_returns_mlruns_status_beside_ours(error, status, code):
    def fail(body):
        raise error

    graph = sg.Graph("silent")
    graph.to(name="fail", handler=fail).respond()
    with graph.to_mock_server() as mock:
        response = mock.test(body="x", method="GET", silent=True)
        assert (response.status_code, response.code) == (status, code)
        assert type(error).__name__ in response.body or code in ("INVALID_ARGUMENT", "NOT_FOUND")
        assert str(error) in response.body
        with pytest.raises(type(error)):
            mock.test(body="x")


def test_a_bad_json_body_is_a_400():
    graph = sg.Graph("json")
    graph.to(name="echo", handler=lambda body: body).respond()
    with graph.to_mock_server() as mock:
        response = mock.test(body="xx [1,2]", content_type="application/json", silent=True)
        assert response.status_code == 400
        with pytest.raises(sg.InvalidArgument, match="not valid JSON"):
            mock.test(body="xx [1,2]", content_type="application/json")


def test_the_mock_servers_context_is_the_one_steps_get():
    class Visits:
        def __init__(self, context, name):
            self.context, self.name = context, name

        def do(self, body):
            self.context.visits[self.name] = self.context.visits.get(self.name, 0) + 1
            return body

    graph = sg.Graph("ctx")
    graph.to(Visits, name="a").to(Visits, name="b").respond()
    mock = graph.to_mock_server()
    mock.context.visits = {}
    try:
        mock.test(body=1)
        assert mock.context.visits == {"a": 1, "b": 1}
    finally:
        mock.close()


# -- 6. checks at the moment MLRun makes them -------------------------------------------------------


def test_a_sync_graph_may_not_allow_cycles():
    with pytest.raises(sg.GraphError, match="Cyclic graphs are not supported with sync engine"):
        sg.Graph("sync-loop", engine="sync", allow_cyclic=True)


# -- 7. the sync engine -----------------------------------------------------------------------------


class Append:
    def __init__(self, name):
        self.name = name

    def do(self, body):
        return [*body, self.name]


class Fails:
    def do(self, body):
        raise ValueError(f"cannot take {body}")


class Report:
    """A full-event error handler: reports where and why the flow failed."""

    def do(self, event):
        event.body = {"body": event.body, "origin_state": event.origin_state, "error": event.error}
        return event


def test_a_sync_flow_without_respond_returns_the_last_steps_output():
    graph = sg.Graph("chain", engine="sync")
    graph.add_step(Append, name="s1")
    graph.add_step(Append, name="s2", after="$prev")
    graph.add_step(Append, name="s3", after="$prev")
    with graph.to_mock_server() as mock:
        assert mock.test(body=[]) == ["s1", "s2", "s3"]


def test_the_async_flow_without_respond_still_returns_the_event_id():
    graph = sg.Graph("chain")
    graph.to(Append, name="s1")
    with graph.to_mock_server() as mock:
        assert set(mock.test(body=[], event_id="e")) == {"id"}


def test_a_sync_flow_refuses_model_runners_and_branches():
    graph = sg.Graph("sync", engine="sync")
    with pytest.raises(sg.GraphError, match="ModelRunnerStep can only be added to a graph with the async engine"):
        graph.to(sg.ModelRunnerStep(name="models"))
    first = graph.to(Append, name="s1")
    first.to(Append, name="s2")
    with pytest.raises(sg.GraphError, match="without branches or joins"):
        first.to(Append, name="s3")
    graph.add_step(Append, name="other")
    with pytest.raises(sg.GraphError, match="all start one"):
        graph.to_mock_server()


def test_an_error_handler_named_by_a_step_of_the_graph():
    graph = sg.Graph("catching", engine="sync")
    graph.add_step(Append, name="s1")
    graph.add_step(Fails, name="raiser", after="$prev").error_handler("catch")
    graph.add_step(Append, name="s3", after="$prev")
    graph.add_step(Report, name="catch", full_event=True)
    with graph.to_mock_server() as mock:
        response = mock.test(body=[])
    assert response["origin_state"] == "raiser" and "cannot take ['s1']" in response["error"]


# -- 4. model artifacts and model objects -----------------------------------------------------------


class Remote(sg.Model):
    """Model code as MLRun users write it: reads its artifact's url and default config."""

    def predict(self, body, **kwargs):
        return {**body, "url": self.model_artifact.model_url, "config": self.model_artifact.default_config}


class FromFile(sg.Model):
    def load(self):
        path, self.extra = self.get_local_model_path(suffix=".txt")
        with open(path) as file:
            self.weights = file.read()

    def predict(self, body):
        return {"weights": self.weights, "extra": self.extra}


def test_model_code_reads_url_and_default_config_from_its_artifact():
    artifact = sg.ModelArtifact(model_url="http://models/infer", default_config={"version": "4"})
    runner = sg.ModelRunnerStep(name="models")
    runner.add_model("remote", Remote, execution_mechanism="naive", model_artifact=artifact)
    graph = sg.Graph("remote")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"q": 1}) == {"q": 1, "url": "http://models/infer", "config": {"version": "4"}}


def test_get_local_model_path_finds_the_model_file(tmp_path):
    (tmp_path / "model.txt").write_text("123")
    artifact = sg.ModelArtifact(str(tmp_path), extra_data={"labels": ["a"]})
    runner = sg.ModelRunnerStep(name="models").add_model(
        "m", FromFile, execution_mechanism="naive", model_artifact=artifact
    )
    graph = sg.Graph("files")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={}) == {"weights": "123", "extra": {"labels": ["a"]}}
    assert sg.ModelArtifact(str(tmp_path), model_file="model.txt").uri == str(tmp_path)


def test_a_model_object_is_rebuilt_from_its_arguments_wherever_it_runs():
    runner = sg.ModelRunnerStep(name="models")
    runner.add_model("m1", Bump(name="m1", by=5), execution_mechanism="naive")
    runner.add_model("m2", Bump(name="m2", by=7), execution_mechanism="thread_pool")
    graph = sg.Graph("objects")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"n": 0}) == {"m1": {"n": 5}, "m2": {"n": 7}}
    with pytest.raises(sg.GraphError, match="Inconsistent name"):
        runner.add_model("m3", Bump(name="other"), execution_mechanism="naive")
    with pytest.raises(sg.GraphError, match="comes with its own arguments"):
        runner.add_model("m4", Bump(name="m4"), execution_mechanism="naive", by=1)
    assert not Bump(name="x").is_streaming()


# -- 5. LLModel -------------------------------------------------------------------------------------


def capital_prompt(model: sg.ModelArtifact | None = None, legend: dict | None = None) -> sg.LLMPromptArtifact:
    return sg.LLMPromptArtifact(
        model_artifact=model,
        prompt_template=[{"role": "user", "content": "What is the capital city of {country}?"}],
        prompt_legend=legend if legend is not None else {"country": {"field": None, "description": "a country"}},
        invocation_config={"temperature": 0.5},
    )


class Inspecting(sg.LLModel):
    """Overrides predict, as MLRun users do: gets the request already built."""

    def predict(self, body, **kwargs):
        return {"messages": kwargs.get("messages"), "config": kwargs.get("invocation_config")}


def llm_graph(model_class, artifact, mechanism="naive") -> sg.Graph:
    runner = sg.ModelRunnerStep(name="llm")
    runner.add_model("chat", model_class, execution_mechanism=mechanism, model_artifact=artifact, result_path="outputs")
    graph = sg.Graph("llm")
    graph.to(runner).respond()
    return graph


def test_an_llmodel_subclass_gets_messages_and_invocation_config():
    with llm_graph(Inspecting, capital_prompt(sg.ModelArtifact("mock://any"))).to_mock_server() as mock:
        out = mock.test(body={"country": "France"})["outputs"]
    assert out == {
        "messages": [{"role": "user", "content": "What is the capital city of France?"}],
        "config": {"temperature": 0.5},
    }


@pytest.mark.parametrize(
    "legend",
    [
        None,
        {"country": {"field": None, "description": "a country"}},
        {"country": {"field": "not-there"}, "unused": {"field": "country"}},
        {"country": {"field": "state"}},
    ],
)
def test_prompt_legends_as_mlrun_documents_them(legend):
    prompt = capital_prompt(sg.ModelArtifact("mock://any"), legend=legend)
    body = {"country": "France", "state": "Israel"}
    expected = "Israel" if legend and legend["country"].get("field") == "state" else "France"
    assert prompt.render(body)[0]["content"] == f"What is the capital city of {expected}?"


@pytest.mark.parametrize("mechanism", ["naive", "asyncio"])
def test_the_mock_provider_answers_without_a_model(mechanism):
    with llm_graph(sg.LLModel, capital_prompt(sg.ModelArtifact("mock://my-model")), mechanism).to_mock_server() as mock:
        out = mock.test(body={"country": "France"})["outputs"]
    assert out == {
        "answer": "You are using a mock model provider, no actual inference is performed.",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
    }


def test_a_prompt_with_no_model_behind_it_is_refused_unless_predict_is_overridden():
    with pytest.raises(sg.ModelRunnerError, match="Model provider could not be determined for model 'chat'"):
        llm_graph(sg.LLModel, capital_prompt()).to_mock_server().start()
    with llm_graph(Inspecting, capital_prompt()).to_mock_server() as mock:
        assert mock.test(body={"country": "Peru"})["outputs"]["messages"][0]["content"].endswith("Peru?")


def test_enrich_prompt_builds_one_request_or_a_batch():
    model = sg.LLModel(name="m", input_path="data")
    prompt = capital_prompt()
    one, config = model.enrich_prompt({"data": {"country": "Chile"}}, "m", prompt)
    assert one == [{"role": "user", "content": "What is the capital city of Chile?"}] and config == {"temperature": 0.5}
    batch, _ = model.enrich_prompt({"data": [{"country": "A"}, {"country": "B"}]}, "m", prompt)
    assert [messages[0]["content"][-2:] for messages in batch] == ["A?", "B?"]
    own, _ = model.enrich_prompt({"data": [{"messages": [{"role": "user", "content": "hi"}]}]}, "m", None)
    assert own == [[{"role": "user", "content": "hi"}]]


# -- 8. graph building ------------------------------------------------------------------------------


class Count(sg.Model):
    def predict(self, body):
        return {**body, "counter": body["counter"] + 1}


class Tool:
    def __init__(self, name):
        self.name = name

    def do(self, body):
        return {**body, self.name: body.get(self.name, 0) + 1}


class ToolPicker(sg.ModelRunnerSelector):
    """Picks the steps after the runner from its output, as an agent picks tools."""

    def select_outlets(self, event):
        count = event["counter"]
        return ["tool_a"] if count < 3 else ["tool_b"] if count < 5 else ["end"]


def test_a_model_runner_selector_chooses_the_steps_after_the_runner():
    graph = sg.Graph("agent", allow_cyclic=True)
    runner = sg.ModelRunnerStep(name="llm", model_runner_selector="ToolPicker")
    runner.add_model("counter", Count, execution_mechanism="naive")
    step = graph.to(runner)
    step.to(Tool, name="tool_a", cycle_to="llm")
    step.to(Tool, name="tool_b", cycle_to="llm")
    step.to(Tool, name="end").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"counter": 0}) == {"counter": 5, "tool_a": 2, "tool_b": 2, "end": 1}


def test_choice_by_field_routes_by_a_body_field():
    choice = sg.ChoiceByField("to")
    assert choice.select_outlets({"to": "a"}) == ["a"]
    assert choice.select_outlets({"to": ("a", "b")}) == ("a", "b")
    for body, message in [
        ({"x": 1}, r"Field 'to' is not contained in the event keys \['x'\]"),
        ({"to": None}, "exists but its value is None"),
        ({"to": 3}, "must be a string or list of strings but is instead of type 'int'"),
        ({"to": []}, "cannot be an empty list"),
    ]:
        with pytest.raises(sg.InvalidArgument, match=message):
            choice.select_outlets(body)


def test_insertion_with_before_insert_step_after_step_and_set_flow():
    graph = sg.Graph("inserted", engine="sync")
    graph.add_step(Append, name="s2")
    graph.add_step(Append, name="s1", before="s2")
    graph.add_step(Append, name="s4", after="s2")
    graph.insert_step("s3", sg.TaskStep("s3", class_name=Append), after="s2", before="s4")
    with graph.to_mock_server() as mock:
        assert mock.test(body=[]) == ["s1", "s2", "s3", "s4"]

    joined = sg.Graph("joined")
    first = joined.to(name="double", handler="(event * 2)")
    first.to(name="plus2", handler="(event + 2)")
    first.to(name="plus3", handler="(event + 3)")
    gather = joined.add_step(Tagger, name="gather").after_step("plus2", "plus3")
    assert gather.after == ["plus2", "plus3"]

    runner = sg.ModelRunnerStep(name="models").add_model("m", Bump, execution_mechanism="naive")
    flow = sg.Graph("flow")
    flow.set_flow([runner]).respond()
    assert flow.model_endpoints_names == ["m"]
    with flow.to_mock_server() as mock:
        assert mock.test(body={"n": 1}) == {"n": 2}


# -- the compatibility entry point ------------------------------------------------------------------


def test_an_mlrun_function_maps_onto_a_graph():
    from servegraph.compat import mlrun

    fn = mlrun.new_function("tests", kind="serving")
    graph = fn.set_topology("flow", engine="sync")
    graph.to(name="s1", handler="(event + 1)").to(name="s2", handler="json.dumps")
    server = fn.to_mock_server()
    assert server.test(body=5) == "6"
    server.wait_for_completion()

    graph = fn.set_topology("flow", exist_ok=True)
    graph.to(Fails, name="fails").respond()
    server = fn.to_mock_server()
    with pytest.raises(RuntimeError, match=r"failed \(400\): step 'fails' failed: ValueError: cannot take 1"):
        server.test(body=1)
    assert server.test(body=1, silent=True).status_code == 400
    server.wait_for_completion()

    graph = fn.set_topology("flow", exist_ok=True)
    graph.to(Doubler, name="pre").to("*", name="router").respond()
    fn.add_model("m1", class_name="Doubler")
    assert graph.model_endpoints_routes_names == ["m1"]
    server = fn.to_mock_server()
    assert server.test("/m1", body=2) == 8
    server.wait_for_completion()


def test_model_selector_is_deprecated_as_in_mlrun_and_still_selects():
    with pytest.warns(FutureWarning, match="model_selector.*deprecated"):
        runner = sg.ModelRunnerStep(name="models", model_selector=ByEvent)
    runner.add_model("a", Bump, execution_mechanism="naive")
    runner.add_model("b", Bump, execution_mechanism="naive", by=2)
    graph = sg.Graph("deprecated")
    graph.to(runner).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"n": 1, "models": ["a"]}) == {"n": 2, "models": ["a"]}
    assert "model_runner_selector" in graph.to_dict()["steps"]["models"]
