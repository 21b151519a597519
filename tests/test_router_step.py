"""sg.RouterStep: the event path picks the route (MLRun's router / the V2 model paths)."""

import graph_steps
import pytest

import servegraph as sg


def router_graph(*routes):
    graph = sg.Graph("routing")
    router = graph.to(sg.RouterStep(name="router"))
    for key, scale in routes:
        router.add_route(key, class_name="graph_steps.Model", scale=scale)
    router.respond()
    return graph


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/m1", {"model": "m1", "y": 2}),
        ("/m2", {"model": "m2", "y": 20}),
        ("/v2/models/m1/infer", {"model": "m1", "y": 2}),
        ("/v2/models/m2/infer", {"model": "m2", "y": 20}),
        ("m2", {"model": "m2", "y": 20}),
    ],
)
def test_path_picks_the_route(path, expected):
    with router_graph(("m1", 1), ("m2", 10)).to_mock_server() as mock:
        assert mock.test(path, body={"x": 2}) == expected


def test_unknown_route_is_not_found_naming_it():
    with router_graph(("m1", 1), ("m2", 10)).to_mock_server() as mock:
        with pytest.raises(sg.NotFound, match="'m3'"):
            mock.test("/v2/models/m3/infer", body={"x": 2})
        with pytest.raises(sg.NotFound, match="'nope'"):
            mock.test("/nope", body={"x": 2})
        with pytest.raises(sg.NotFound):
            mock.test("/", body={"x": 2})


def test_single_route_serves_the_root_path():
    with router_graph(("only", 3)).to_mock_server() as mock:
        assert mock.test("/", body={"x": 2}) == {"model": "only", "y": 6}
        assert mock.test("/only", body={"x": 2}) == {"model": "only", "y": 6}


def test_routes_by_class_object_and_handler_then_next_step():
    graph = sg.Graph("routing")
    router = graph.to(sg.RouterStep, name="router")
    router.add_route("obj", class_name=graph_steps.Model, scale=5)
    router.add_route("fn", handler=graph_steps.double)
    router.to(name="wrap", handler=graph_steps.tag).respond()
    with graph.to_mock_server() as mock:
        assert mock.test("/obj", body={"x": 1}) == "tag:{'model': 'obj', 'y': 5}"
        assert mock.test("/v2/models/fn/infer", body={"x": 1}) == "tag:{'x': 2}"


def test_router_input_and_result_paths():
    graph = sg.Graph("routing")
    router = graph.to(sg.RouterStep, name="router", input_path="inputs", result_path="outputs")
    router.add_route("m", class_name=graph_steps.Model, scale=2)
    router.respond()
    with graph.to_mock_server() as mock:
        assert mock.test("/m", body={"inputs": {"x": 4}}) == {"inputs": {"x": 4}, "outputs": {"model": "m", "y": 8}}


def test_route_key_with_slash_is_rejected():
    router = sg.RouterStep(name="router")
    with pytest.raises(sg.GraphError, match="a/b"):
        router.add_route("a/b", class_name=graph_steps.Model)
