"""Graphs as data: dict and YAML round trips rebuild a graph that serves the same, and Mermaid plots."""

import pytest

import servegraph as sg


def cyclic_graph():
    graph = sg.Graph("writer", allow_cyclic=True, max_iterations=7)
    graph.to("graph_steps.Generator", name="gen", max_iterations=5)
    graph["gen"].to("graph_steps.Evaluator", name="eval", good_after=3, cycle_to="gen").respond()
    graph.error_handler(name="catcher", handler="graph_steps.on_error", full_event=True)
    return graph


def routed_graph():
    graph = sg.Graph("routed")
    graph.to(name="pre", handler="graph_steps.add_one")
    router = graph.add_step("RouterStep", name="router", after="pre")
    router.add_route("m1", class_name="graph_steps.Model", scale=2)
    router.add_route("bad", handler="graph_steps.fail")
    router.error_handler(name="recover", handler="graph_steps.recover", full_event=True, before="post")
    router.to(name="post", handler="graph_steps.tag", result_path="out.tag").respond()
    return graph


REQUESTS = {
    cyclic_graph: [("/", {"drafts": []}), ("/", {"drafts": ["a", "b"]})],
    routed_graph: [("/m1", {"x": 1}), ("/v2/models/m1/infer", {"x": 5}), ("/bad", {"x": 1})],
}


def serve(graph, requests):
    with graph.to_mock_server() as mock:
        return [mock.test(path, body=dict(body), event_id="fixed") for path, body in requests]


@pytest.mark.parametrize("build", [cyclic_graph, routed_graph])
def test_dict_round_trip_serves_the_same(build):
    graph = build()
    spec = graph.to_dict()
    rebuilt = sg.Graph.from_dict(spec)
    assert rebuilt.to_dict() == spec
    assert serve(rebuilt, REQUESTS[build]) == serve(graph, REQUESTS[build])


@pytest.mark.parametrize("build", [cyclic_graph, routed_graph])
def test_yaml_round_trip_serves_the_same(build):
    graph = build()
    text = graph.to_yaml()
    rebuilt = sg.Graph.from_yaml(text)
    assert rebuilt.to_yaml() == text
    assert serve(rebuilt, REQUESTS[build]) == serve(graph, REQUESTS[build])


def test_served_results_are_the_expected_ones():
    assert serve(cyclic_graph(), REQUESTS[cyclic_graph]) == [
        {"drafts": ["draft1", "draft2", "draft3"]},
        {"drafts": ["a", "b", "draft3"]},
    ]
    assert serve(routed_graph(), REQUESTS[routed_graph]) == [
        {"model": "m1", "y": 4, "out": {"tag": "tag:{'model': 'm1', 'y': 4}"}},
        {"model": "m1", "y": 12, "out": {"tag": "tag:{'model': 'm1', 'y': 12}"}},
        {"recovered_from": "router", "x": 0, "out": {"tag": "tag:{'recovered_from': 'router', 'x': 0}"}},
    ]


def test_dict_keeps_the_declaration():
    cyclic = cyclic_graph().to_dict()
    assert cyclic["allow_cyclic"] is True
    assert cyclic["max_iterations"] == 7
    assert cyclic["on_error"] == "catcher"
    assert cyclic["steps"]["gen"] == {"kind": "task", "class_name": "graph_steps.Generator", "max_iterations": 5}
    assert cyclic["steps"]["eval"] == {
        "kind": "task",
        "class_name": "graph_steps.Evaluator",
        "class_args": {"good_after": 3},
        "after": ["gen"],
        "cycle_to": ["gen"],
        "responder": True,
    }
    assert cyclic["error_handlers"]["catcher"] == {
        "kind": "task",
        "handler": "graph_steps.on_error",
        "full_event": True,
    }
    routed = routed_graph().to_dict()
    assert routed["steps"]["router"]["routes"] == {
        "m1": {"class_name": "graph_steps.Model", "class_args": {"scale": 2}},
        "bad": {"handler": "graph_steps.fail"},
    }
    assert routed["steps"]["router"]["on_error"] == "recover"
    assert routed["error_handlers"]["recover"]["before"] == ["post"]


def test_rebuilt_cycle_is_still_rejected_without_allow_cyclic():
    spec = cyclic_graph().to_dict()
    spec["allow_cyclic"] = False
    with pytest.raises(sg.GraphError, match="gen -> eval -> gen"):
        sg.Graph.from_dict(spec).to_mock_server()


@pytest.mark.parametrize("build", [cyclic_graph, routed_graph])
def test_plot_is_mermaid_with_every_step(build):
    graph = build()
    text = graph.plot()
    assert text.startswith("flowchart")
    for name in [*graph.steps, *graph.error_handlers]:
        assert f'"{name}' in text


def test_plot_shows_the_cycle_edge():
    lines = cyclic_graph().plot().splitlines()
    cycle_edges = [line for line in lines if "cycle" in line]
    assert len(cycle_edges) == 1
    source, target = cycle_edges[0].split("-. cycle .->")
    assert "eval" in source
    assert "gen" in target
