"""Cyclic graphs: generator/evaluator loops, "Complete", and the iteration limits."""

import re

import graph_steps
import pytest

import servegraph as sg


def loop_graph(evaluator, *, runs=None, gen_max=None, **graph_kwargs):
    graph = sg.Graph("loop", allow_cyclic=True, **graph_kwargs)
    graph.to(graph_steps.Generator(runs), name="gen", max_iterations=gen_max)
    graph["gen"].to(evaluator, name="eval", cycle_to="gen").respond()
    return graph


def test_class_select_outlets_loops_until_complete():
    runs = []
    graph = loop_graph(graph_steps.Evaluator(good_after=3), runs=runs)
    with graph.to_mock_server() as mock:
        assert mock.test(body={"drafts": []}) == {"drafts": ["draft1", "draft2", "draft3"]}
    assert runs == [0, 1, 2]


def test_choice_subclass_loops_until_complete():
    graph = sg.Graph("choice", allow_cyclic=True)
    graph.to(name="gen", handler=graph_steps.draft).to(graph_steps.Judge, name="judge", cycle_to="gen").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"drafts": [], "want": 4}) == {"drafts": ["d"] * 4, "want": 4}
        assert mock.test(body={"drafts": [], "want": 1}) == {"drafts": ["d"], "want": 1}


def test_cycle_by_import_path_and_cycle_to_method():
    graph = sg.Graph("paths", allow_cyclic=True)
    graph.to("graph_steps.Generator", name="gen").to("graph_steps.Evaluator", name="eval", good_after=2)
    graph["eval"].cycle_to("gen").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"drafts": []}) == {"drafts": ["draft1", "draft2"]}


def test_complete_from_non_responder_ends_the_flow_with_its_body():
    graph = sg.Graph("complete", allow_cyclic=True)
    graph.to(name="gen", handler=graph_steps.draft).to(graph_steps.Judge, name="judge", cycle_to="gen")
    with graph.to_mock_server() as mock:
        assert mock.test(body={"drafts": [], "want": 2}) == {"drafts": ["d", "d"], "want": 2}


def test_step_max_iterations_beats_graph_max_iterations():
    runs = []
    graph = loop_graph(graph_steps.NeverSatisfied(), runs=runs, gen_max=3, max_iterations=5)
    with graph.to_mock_server() as mock, pytest.raises(RuntimeError) as failure:
        mock.test(body={"drafts": []}, event_id="evt-7")
    assert str(failure.value) == "Max iterations exceeded in step 'gen' for event evt-7"
    assert len(runs) == 3


def test_graph_max_iterations_applies_without_a_step_limit():
    runs = []
    graph = loop_graph(graph_steps.NeverSatisfied(), runs=runs, max_iterations=4)
    with graph.to_mock_server() as mock, pytest.raises(RuntimeError, match="Max iterations exceeded in step 'gen'"):
        mock.test(body={"drafts": []})
    assert len(runs) == 4


@pytest.mark.parametrize("graph_limit", [100, None])
def test_default_max_iterations_is_100(graph_limit):
    runs = []
    graph = loop_graph(graph_steps.NeverSatisfied(), runs=runs, max_iterations=graph_limit)
    with graph.to_mock_server() as mock, pytest.raises(RuntimeError) as failure:
        mock.test(body={"drafts": []}, event_id="e100")
    assert str(failure.value) == "Max iterations exceeded in step 'gen' for event e100"
    assert len(runs) == 100


def test_iterations_are_counted_per_event():
    runs = []
    graph = loop_graph(graph_steps.Evaluator(good_after=3), runs=runs, gen_max=3)
    with graph.to_mock_server() as mock:
        for _ in range(3):
            assert mock.test(body={"drafts": []}) == {"drafts": ["draft1", "draft2", "draft3"]}
    assert len(runs) == 9


def test_cycle_without_allow_cyclic_is_a_graph_error_naming_the_cycle():
    graph = sg.Graph("acyclic")
    gen = graph.to(name="gen", handler=graph_steps.draft)
    with pytest.raises(sg.GraphError, match=re.escape("gen -> judge -> gen")):
        gen.to(graph_steps.Judge, name="judge", cycle_to="gen")
    loaded = {"steps": {"gen": {"handler": "graph_steps.draft", "cycle_to": ["gen"]}}}
    with pytest.raises(sg.GraphError, match="allow_cyclic"):  # a graph loaded from a dict is checked before it runs
        sg.Graph.from_dict(loaded).validate()


def test_unknown_outlet_is_an_error_naming_it():
    graph = sg.Graph("bad", allow_cyclic=True)
    graph.to(name="gen", handler=graph_steps.draft).to(graph_steps.BadOutlet, name="pick", cycle_to="gen")
    with graph.to_mock_server() as mock, pytest.raises(sg.ServingError, match="no_such_step"):
        mock.test(body={"drafts": []})


def test_cycle_to_unknown_step_is_a_graph_error():
    graph = sg.Graph("bad", allow_cyclic=True)
    graph.to(name="gen", handler=graph_steps.draft, cycle_to="ghost")
    with pytest.raises(sg.GraphError, match="ghost"):
        graph.to_mock_server()
