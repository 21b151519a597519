"""Failing steps, error handlers at graph and step level, and graphs rejected before they serve."""

import asyncio

import graph_steps
import pytest

import servegraph as sg


def failing_graph(name="errors"):
    graph = sg.Graph(name)
    graph.to(name="pre", handler=graph_steps.add_one).to(name="boom", handler=graph_steps.fail).to(
        name="post", handler=graph_steps.double
    ).respond()
    return graph


def test_failing_step_raises_its_own_exception_naming_the_step():
    with failing_graph().to_mock_server() as mock:
        with pytest.raises(ValueError, match="bad input") as failure:
            mock.test(body={"x": 1})
        assert type(failure.value) is ValueError
        assert any("'boom'" in note for note in failure.value.__notes__)


def test_failure_does_not_break_later_requests():
    graph = sg.Graph("later")
    graph.to(name="inc", handler=graph_steps.increment, input_path="x").respond()
    with graph.to_mock_server() as mock:
        with pytest.raises(sg.InvalidArgument):
            mock.test(body={})
        with pytest.raises(TypeError):
            mock.test(body={"x": "text"})
        assert mock.test(body={"x": 1}) == 2


def test_async_failure_raises_its_own_exception():
    async def main():
        async with failing_graph().to_mock_server() as mock:
            await mock.atest(body={"x": 1})

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(main())


def test_graph_error_handler_gets_the_event_and_its_result_is_the_response():
    graph = failing_graph()
    graph.error_handler(name="catcher", handler=graph_steps.on_error, full_event=True)
    with graph.to_mock_server() as mock:
        result = mock.test(body={"x": 1}, event_id="e-1")
    assert result == {"error": "bad input {'x': 2}", "origin": "boom", "id": "e-1"}


def test_graph_error_handler_by_import_path():
    graph = failing_graph()
    graph.error_handler(name="catcher", handler="graph_steps.on_error", full_event=True)
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 1})["origin"] == "boom"


def test_step_error_handler_continues_the_flow_before_a_step():
    graph = failing_graph()
    graph["boom"].error_handler(name="recover", handler=graph_steps.recover, full_event=True, before="post")
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 1}) == {"recovered_from": "boom", "x": 0}


def test_step_error_handler_wins_over_the_graph_handler():
    graph = failing_graph()
    graph.error_handler(name="catcher", handler=graph_steps.on_error, full_event=True)
    graph["boom"].error_handler(name="recover", handler=graph_steps.recover, full_event=True, before="post")
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 1}) == {"recovered_from": "boom", "x": 0}


def test_error_inside_the_error_handler_propagates():
    graph = failing_graph()
    graph.error_handler(name="catcher", handler=graph_steps.broken_handler, full_event=True)
    with graph.to_mock_server() as mock, pytest.raises(KeyError, match="handler broke too") as failure:
        mock.test(body={"x": 1})
    assert any("'catcher'" in note for note in failure.value.__notes__)


def test_max_iterations_goes_to_the_error_handler():
    graph = sg.Graph("loop", allow_cyclic=True, max_iterations=3)
    graph.to(name="gen", handler=graph_steps.draft).to(graph_steps.NeverSatisfied, name="judge", cycle_to="gen")
    graph.error_handler(name="catcher", handler=graph_steps.on_error, full_event=True)
    with graph.to_mock_server() as mock:
        result = mock.test(body={"drafts": []}, event_id="e-9")
    assert result == {"error": "Max iterations exceeded in step 'gen' for event e-9", "origin": "gen", "id": "e-9"}


def test_error_in_a_branch_reaches_the_caller():
    graph = sg.Graph("branches")
    graph.to(name="start", handler=graph_steps.echo)
    graph.add_step(name="ok", handler=graph_steps.echo, after="start").respond()
    graph.add_step(name="boom", handler=graph_steps.fail, after="start")
    with graph.to_mock_server() as mock, pytest.raises(ValueError, match="bad input"):
        mock.test(body={"x": 1})


def test_error_in_a_step_after_a_stream_reaches_the_caller():
    graph = sg.Graph("stream")
    graph.to(name="source", handler=graph_steps.count_up).to(name="boom", handler=graph_steps.fail).respond()
    with graph.to_mock_server() as mock, pytest.raises(ValueError, match="bad input"):
        list(mock.test(body={"n": 3}))


def test_stream_error_goes_to_the_error_handler():
    graph = sg.Graph("stream")
    graph.to(name="source", handler=graph_steps.fail_after_two).respond()
    graph.error_handler(name="catcher", handler=graph_steps.on_error, full_event=True)
    with graph.to_mock_server() as mock:
        chunks = list(mock.test(body={}, event_id="s-1"))
    assert chunks == [{"i": 0}, {"i": 1}, {"error": "stream broke", "origin": "source", "id": "s-1"}]


# -- graphs rejected while building or before serving ----------------------------------------------


def test_unknown_after_step():
    graph = sg.Graph("g")
    graph.to(name="a", handler=graph_steps.echo)
    with pytest.raises(sg.GraphError, match="'missing'"):
        graph.add_step(name="b", handler=graph_steps.echo, after="missing")


def test_duplicate_step_names():
    graph = sg.Graph("g")
    graph.to(name="same", handler=graph_steps.echo)
    with pytest.raises(sg.GraphError, match="'same'"):
        graph.to(name="same", handler=graph_steps.double)
    with pytest.raises(sg.GraphError, match="'same'"):
        graph.error_handler(name="same", handler=graph_steps.on_error)


def test_cycle_without_allow_cyclic_is_refused_as_it_is_made():
    graph = sg.Graph("g")
    a = graph.to(name="a", handler=graph_steps.echo)
    with pytest.raises(sg.GraphError, match="a -> b -> a"):
        a.to(name="b", handler=graph_steps.echo, cycle_to="a")
    assert list(graph.steps) == ["a"]
    b = a.to(name="b", handler=graph_steps.echo)
    with pytest.raises(sg.GraphError, match="cyclic graphs are not allowed, enable allow_cyclic"):
        b.cycle_to("a")
    assert b.cycle_targets == []


def test_unimportable_class_path():
    graph = sg.Graph("g")
    with pytest.raises(sg.GraphError, match=r"nope\.module\.Class"):
        graph.to("nope.module.Class", name="a")
    with pytest.raises(sg.GraphError, match=r"graph_steps\.NoSuchClass"):
        graph.to("graph_steps.NoSuchClass", name="a")


def test_unimportable_handler_path():
    graph = sg.Graph("g")
    with pytest.raises(sg.GraphError, match=r"nope\.module\.func"):
        graph.to(name="a", handler="nope.module.func")
    with pytest.raises(sg.GraphError, match=r"graph_steps\.no_such_func"):
        graph.to(name="a", handler="graph_steps.no_such_func")


def test_graph_without_steps():
    with pytest.raises(sg.GraphError, match="'empty' has no steps"):
        sg.Graph("empty").to_mock_server()


def test_two_responders():
    graph = sg.Graph("g")
    graph.to(name="first", handler=graph_steps.echo).respond()
    graph["first"].to(name="second", handler=graph_steps.echo).respond()
    with pytest.raises(sg.GraphError, match=r"first.*second"):
        graph.to_mock_server()


def test_class_without_do_method():
    graph = sg.Graph("g")
    graph.to(graph_steps.Model, name="m", handler="predict")
    with pytest.raises(sg.GraphError, match="'predict'"), graph.to_mock_server():
        pass


def test_bad_constructor_arguments():
    graph = sg.Graph("g")
    graph.to(graph_steps.Multiply, name="mul", unknown_arg=1)
    with pytest.raises(sg.GraphError, match=r"'mul'.*unknown_arg"), graph.to_mock_server():
        pass
