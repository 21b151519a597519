"""MLRun's router topology, model servers and Merge, written from MLRun's documented behaviour with our own
models: V2ModelServer steps and routes, ModelRouter, VotingEnsemble, ParallelRun, storey's Merge."""

from __future__ import annotations

import pytest

import servegraph as sg
from servegraph.compat import mlrun


class Scaler(sg.V2ModelServer):
    """Multiplies the first input by its `factor` parameter; explains by echoing it."""

    def load(self):
        self.factor = self.get_param("factor", 1)

    def predict(self, request):
        return [value * self.factor for value in request["inputs"]]

    def explain(self, request):
        return {"why": request["inputs"][0]}

    def op_echo(self, event):
        return {"echoed": event.body}


class Labeller(sg.V2ModelServer):
    def predict(self, request):
        return {"label": [self.get_param("label")] * len(request["inputs"])}

    def load(self):
        pass


class Unloaded(sg.V2ModelServer):
    def predict(self, request):
        return request


def router_function(router=None, **class_args):
    fn = mlrun.new_function("routers")
    graph = fn.set_topology("router", router, **class_args)
    graph.add_route("a", class_name=Scaler, model_path="", factor=10)
    graph.add_route("b", class_name="Scaler", factor=20)
    graph.add_route("c:v2", class_name=Scaler, factor=30)
    return fn


def test_a_model_server_step_answers_by_operation():
    graph = sg.Graph("server", engine="sync")
    graph.to("Scaler", "scaler", factor=3).respond()
    with graph.to_mock_server() as mock:
        response = mock.test(body={"inputs": [1, 2]}, event_id="e1")
        assert response == {"id": "e1", "model_name": "scaler", "outputs": [3, 6]}
        assert mock.test("/explain", body={"inputs": [4]})["outputs"] == {"why": 4}
        assert mock.test("/echo", body={"inputs": [4]}) == {"echoed": {"inputs": [4]}}
        assert mock.test("/", method="GET") == {"name": "scaler", "version": "", "inputs": [], "outputs": []}
        assert mock.test(body={"inputs": [2], "operation": "explain", "id": "mine"})["id"] == "mine"
        with pytest.raises(ValueError, match="illegal model operation nope"):
            mock.test("/nope", body={"inputs": [1]})
        with pytest.raises(ValueError, match="Expected key"):
            mock.test(body={"x": 1})


def test_a_model_server_without_load_needs_a_model_object():
    graph = sg.Graph("unloaded")
    graph.to(Unloaded(name="u")).respond()
    with pytest.raises(ValueError, match="load method or a model object"):
        graph.to_mock_server().start()
    graph = sg.Graph("given")
    graph.to(Unloaded(name="u", model=object())).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"inputs": [1]})["model_name"] == "u"


def test_model_server_objects_read_and_write_their_paths():
    graph = sg.Graph("chained")
    graph.to(Scaler(name="m1", factor=2), input_path="req", result_path="m1").to(
        Scaler(name="m2", factor=3, input_path="req", result_path="m2")
    ).respond()
    with graph.to_mock_server() as mock:
        response = mock.test(body={"req": {"inputs": [5]}})
    assert list(response) == ["req", "m1", "m2"]
    assert (response["m1"]["outputs"], response["m2"]["outputs"]) == ([10], [15])


def test_model_router_routes_by_path_version_and_body():
    fn = router_function()
    server = fn.to_mock_server()
    try:
        assert server.test("/v2/models/a/infer", '{"inputs": [5]}')["outputs"] == [50]
        versioned = server.test("/v2/models/c/versions/v2/infer", {"inputs": [1]})
        assert (versioned["model_name"], versioned["model_version"], versioned["outputs"]) == ("c", "v2", [30])
        assert server.test(body={"model": "b", "inputs": [1]})["outputs"] == [20]
        assert server.test(body={"inputs": [1]})["outputs"] == [10]  # no model named: the first route
        assert server.test(body={"model": "a", "operation": "explain", "inputs": [7]})["outputs"] == {"why": 7}
        assert server.test("/v2/models/a/echo", {"x": 1}) == {"echoed": {"x": 1}}
        assert server.test("/v2/models/", method="GET") == {"models": ["a", "b", "c:v2"]}
        assert server.test("/v2/models/c/versions/v2", method="GET")["version"] == "v2"
        assert server.test("/", method="GET") == {"name": "ModelRouter", "version": "v2", "extensions": []}
        unknown = server.test("/v2/models/zz/infer", {"inputs": [1]}, silent=True)
        assert unknown.status_code == 400 and "model zz doesnt exist, available models: a | b | c:v2" in unknown.body
        bad_prefix = server.test("/elsewhere", {"inputs": [1]}, silent=True)
        assert bad_prefix.status_code == 400 and "illegal path prefix" in bad_prefix.body
    finally:
        server.wait_for_completion()


def test_voting_ensemble_regression_votes_under_its_own_name():
    fn = router_function(sg.VotingEnsemble(vote_type="regression"))
    server = fn.to_mock_server()
    try:
        listed = server.test("/v2/models/", method="POST", body={"inputs": [1]})
        assert listed["models"] == ["a", "b", "c:v2", "VotingEnsemble"]
        for path in ("/v2/models/VotingEnsemble/infer", "/v2/models/infer", "/"):
            response = server.test(path, {"inputs": [1, 2]}, event_id="e")
            assert response == {"id": "e", "model_name": "VotingEnsemble", "outputs": [20.0, 40.0]}
        assert server.test("/v2/models/b/infer", {"inputs": [1]})["outputs"] == [20]
        missing = server.test("/v2/models/b/infer", {"x": 1}, silent=True)
        assert missing.status_code == 400 and 'Expected key "inputs"' in missing.body
    finally:
        server.wait_for_completion()


def test_voting_ensemble_weights_and_classification():
    fn = mlrun.new_function("votes")
    graph = fn.set_topology(
        "router", "VotingEnsemble", name="vote", weights={"x": 3, "y": 1, "z": 1}, prediction_col_name="label"
    )
    graph.add_route("x", class_name=Labeller, label=1)
    graph.add_route("y", class_name=Labeller, label=2)
    graph.add_route("z", class_name=Labeller, label=2)
    server = fn.to_mock_server()
    try:
        # 'x' outweighs 'y' and 'z' together; the outputs were dicts, so the vote comes back as one
        response = server.test("/v2/models/vote/infer", {"inputs": [0, 0]})
        assert response["outputs"] == {"label": [1, 1]}
    finally:
        server.wait_for_completion()
    ensemble = sg.VotingEnsemble(routes={"p": None, "q": None})
    ensemble.post_init()
    assert ensemble.logic([[1, 2], [3, 3]], [0.5, 0.5]) == [1, 3]  # integral: classification, ties to the lower
    assert ensemble.vote_type == "classification"


class Constant:
    def __init__(self, data=None, **_):
        self.data = data or {}

    def do(self, body):
        return self.data


def doubled(body):
    return {"double": body["x"] * 2}


def broken(body):
    raise ValueError("no")


@pytest.mark.parametrize("executor_type", ["thread", "process", "array"])
def test_parallel_run_merges_the_routes_results(executor_type):
    fn = mlrun.new_function("parallel")
    graph = fn.set_topology("router", sg.ParallelRun(extend_event=True, executor_type=executor_type))
    graph.add_route("c1", class_name="Constant", data={"a": 1})
    graph.add_route("c2", class_name=Constant, data={"b": 2})
    graph.add_route("c3", handler="doubled")
    server = fn.to_mock_server()
    try:
        assert server.test(body={"x": 4}) == {"x": 4, "a": 1, "b": 2, "double": 8}
    finally:
        server.wait_for_completion()


@pytest.mark.parametrize(("executor_type", "fails"), [("thread", False), ("array", True)])
def test_parallel_run_leaves_out_a_failing_route_unless_array(executor_type, fails):
    graph = sg.Graph("failing")
    router = graph.to(sg.RouterStep(class_name="ParallelRun", class_args={"executor_type": executor_type}))
    router.add_route("ok", handler=doubled)
    router.add_route("bad", handler=broken)
    router.respond()
    with graph.to_mock_server() as mock:
        if fails:
            with pytest.raises(ValueError, match="no"):
                mock.test(body={"x": 1})
        else:
            assert mock.test(body={"x": 1}) == {"double": 2}


def as_inputs(body):
    return {"inputs": [body["n"]]}


def test_router_classes_by_mlrun_names_and_in_a_flow():
    graph = sg.Graph("nested")
    graph.to(name="pre", handler=as_inputs)
    router = graph.add_step("*mlrun.serving.routers.ModelRouter", name="models", after="pre", result_path="out")
    router.add_route("m", class_name=Scaler, factor=5)
    router.respond()
    assert type(router).__name__ == "RouterStep" and router.cls is sg.ModelRouter
    with graph.to_mock_server() as mock:
        assert mock.test("/v2/models/m/infer", body={"n": 2})["out"]["outputs"] == [10]
    rebuilt = sg.Graph.from_dict(graph.to_dict())
    assert rebuilt["models"].cls is sg.ModelRouter


def test_servegraphs_own_router_passes_the_operation_to_model_servers():
    graph = sg.Graph("plain")
    router = graph.add_step("*", name="models")
    router.add_route("m1", class_name=Scaler, factor=2)
    router.add_route("m2", class_name=Scaler, factor=3)
    router.respond()
    with graph.to_mock_server() as mock:
        assert mock.test("/v2/models/m2/infer", body={"inputs": [5]})["outputs"] == [15]
        assert mock.test("/v2/models/m1/explain", body={"inputs": [5]})["outputs"] == {"why": 5}


async def double(body):
    return body * 2


def plus2(body):
    return body + 2


def plus3(body):
    return body + 3


def test_merge_joins_the_branches_of_each_event():
    graph = sg.Graph("merge")
    start = graph.to(name="double", handler=double)
    start.to(name="plus2", handler=plus2)
    start.to(name="plus3", handler=plus3)
    graph.add_step(sg.Merge(name="join")).respond().after_step("plus2", "plus3")
    with graph.to_mock_server() as mock:
        assert sorted(mock.test(body=5)) == [12, 13]
        assert sorted(mock.test(body=6)) == [14, 15]


def test_merge_by_mlrun_name_joins_by_key_path():
    graph = sg.Graph("keyed")
    start = graph.to(name="double", handler=double, input_path="x", result_path="x")
    start.to(name="plus2", handler=plus2, input_path="x", result_path="x")
    start.to(name="plus3", handler=plus3, input_path="x", result_path="x")
    graph.add_step("storey.Merge", name="join", key_path="event['key']", after=["plus2", "plus3"]).respond()
    assert isinstance(graph["join"], sg.Merge) and not graph["join"].full_event
    with graph.to_mock_server() as mock:
        assert sorted(item["x"] for item in mock.test(body={"x": 4, "key": 7})) == [10, 11]
        with pytest.raises(KeyError):
            mock.test(body={"x": 4})
    assert sg.Graph.from_yaml(graph.to_yaml())["join"].key_path == "event['key']"


def test_merge_with_one_part_passes_bodies_on_and_drops_stale_keys():
    graph = sg.Graph("single")
    graph.to(name="first", handler=double).to(sg.Merge(name="join")).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body=2) == 4
    graph = sg.Graph("stale")
    graph.to(sg.Merge(name="join", expected_num_events=2, max_behind=1, key_path="event")).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body=1, event_id="e1") == {"id": "e1"}  # waits for its second part
        assert mock.test(body=2, event_id="e2") == {"id": "e2"}
        node = mock.engine.nodes["join"]
        assert list(node.waiting) == [2]  # key 1 was dropped when key 2 arrived past max_behind
        assert mock.test(body=2) == [2, 2]


def test_bad_key_path_is_refused_when_built():
    with pytest.raises(sg.GraphError, match="key_path"):
        sg.Merge(key_path="event[")


def test_plot_writes_the_mermaid_text_where_mlrun_draws_its_image(tmp_path):
    graph = sg.Graph("drawn")
    graph.to(name="first", handler=double).respond()
    target = tmp_path / "graph.png"
    assert graph.plot(str(target)) == target.read_text() == graph.plot()
