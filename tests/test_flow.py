"""Straight flows: steps of every calling convention, paths, full events, context, and the mock server's modes."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import graph_steps
import pytest

import servegraph as sg


def three_step_graph(**kwargs):
    graph = sg.Graph("flow", **kwargs)
    graph.to(name="pre", handler=graph_steps.add_one).to(graph_steps.Multiply, name="mul", factor=3).to(
        name="sq", handler=graph_steps.async_square
    ).respond()
    return graph


def test_three_steps_with_function_class_and_async_step():
    with three_step_graph().to_mock_server() as mock:
        assert mock.test("/", body={"x": 1}) == {"x": 36, "by": "mul"}
        assert mock.test("/", body={"x": 2}) == {"x": 81, "by": "mul"}


def test_class_and_handler_by_import_path_with_constructor_args():
    graph = sg.Graph("paths")
    graph.to(name="pre", handler="graph_steps.add_one").to("graph_steps.Multiply", name="mul", factor=10).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 4}) == {"x": 50, "by": "mul"}


def test_class_instance_is_used_as_is():
    graph = sg.Graph("instance")
    graph.to(graph_steps.Multiply(factor=7, name="given"), name="mul").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 2}) == {"x": 14, "by": "given"}


def test_input_path_and_dotted_result_path():
    graph = sg.Graph("paths")
    graph.to(name="inc", handler=graph_steps.increment, input_path="inputs.value", result_path="outputs.inc")
    graph["inc"].to(name="tag", handler=graph_steps.tag, input_path="outputs.inc", result_path="outputs.tag").respond()
    with graph.to_mock_server() as mock:
        result = mock.test(body={"inputs": {"value": 41}, "keep": True})
    assert result == {"inputs": {"value": 41}, "keep": True, "outputs": {"inc": 42, "tag": "tag:42"}}


def test_missing_input_path_is_invalid_argument():
    graph = sg.Graph("paths")
    graph.to(name="inc", handler=graph_steps.increment, input_path="inputs.value").respond()
    with graph.to_mock_server() as mock, pytest.raises(sg.InvalidArgument, match=r"inputs\.value"):
        mock.test(body={"inputs": {}})


def test_full_event_class_uses_do_event():
    graph = sg.Graph("events")
    graph.to(graph_steps.EventReader, name="reader", full_event=True).to(name="mul", handler=graph_steps.double)
    graph["mul"].respond()
    with graph.to_mock_server() as mock:
        result = mock.test("/some/path", body={"x": 5}, event_id="ev-1")
    assert result == {"seen_id": "ev-1", "seen_path": "/some/path", "x": 10}


def test_full_event_handler_receives_the_event():
    graph = sg.Graph("events")
    graph.to(name="describe", handler=graph_steps.describe_event, full_event=True).respond()
    with graph.to_mock_server() as mock:
        result = mock.test("/a/b", body={"q": 1}, event_id="ev-2")
    assert result == {"id": "ev-2", "path": "/a/b", "body": {"q": 1}, "is_event": True}


def test_handler_and_class_get_context():
    graph = sg.Graph("ctx-graph")
    graph.to(name="fn", handler=graph_steps.with_context).to(
        graph_steps.ContextAware, name="cls", input_path="x", result_path="cls", prefix="p-"
    ).respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 1}) == {"x": 1, "graph": "ctx-graph", "cls": "p-ctx-graph:1"}


def test_prev_and_name_lookup():
    graph = sg.Graph("prev")
    graph.to(name="a", handler=graph_steps.add_one)
    graph.add_step(name="b", handler=graph_steps.double, after="$prev")
    graph.add_step(name="c", handler=graph_steps.add_one, after="$prev")
    assert graph["b"].after == ["a"]
    assert graph["c"].after == ["b"]
    graph["c"].respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 1}) == {"x": 5}
    with pytest.raises(KeyError, match="zz"):
        graph["zz"]


def test_without_respond_the_caller_gets_the_event_id():
    graph = sg.Graph("noresp")
    graph.to(name="a", handler=graph_steps.add_one).to(name="b", handler=graph_steps.double)
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 1}, event_id="my-event") == {"id": "my-event"}
        generated = mock.test(body={"x": 1})
    assert set(generated) == {"id"}
    assert generated["id"]
    assert generated["id"] != "my-event"


def test_branch_and_join_runs_the_join_once_per_parent():
    log = []
    graph = sg.Graph("join")
    graph.to(name="start", handler=graph_steps.echo)
    graph.add_step(graph_steps.Recorder(log, "left"), name="left", after="start")
    graph.add_step(graph_steps.Recorder(log, "right"), name="right", after="start")
    graph.add_step(graph_steps.Recorder(log, "join"), name="join", after=["left", "right"])
    with graph.to_mock_server() as mock:
        mock.test(body={"v": 1})
    labels = [label for label, _ in log]
    assert sorted(labels) == ["join", "join", "left", "right"]


def test_branches_get_their_own_copy_of_the_body():
    log = []
    graph = sg.Graph("branches")
    graph.to(name="start", handler=graph_steps.echo)
    graph.add_step(graph_steps.Recorder(log, "first", mutate=True), name="first", after="start")
    graph.add_step(graph_steps.Recorder(log, "second", mutate=True), name="second", after="start")
    with graph.to_mock_server() as mock:
        mock.test(body={"items": []})
    seen = dict(log)
    assert seen["first"] == repr({"items": ["first"], "touched_by": "first"})
    assert seen["second"] == repr({"items": ["second"], "touched_by": "second"})


def test_branch_responder_gets_its_own_branch_body():
    graph = sg.Graph("branch-respond")
    graph.to(name="start", handler=graph_steps.echo)
    graph.add_step(name="inc", handler=graph_steps.add_one, after="start")
    graph.add_step(name="dbl", handler=graph_steps.double, after="start").respond()
    with graph.to_mock_server() as mock:
        assert mock.test(body={"x": 10}) == {"x": 20}


def test_two_roots_both_receive_the_input():
    log = []
    graph = sg.Graph("roots")
    graph.to(graph_steps.Recorder(log, "r1"), name="r1")
    graph.to(graph_steps.Recorder(log, "r2"), name="r2")
    with graph.to_mock_server() as mock:
        mock.test(body={"v": 2})
    assert sorted(log) == [("r1", "{'v': 2}"), ("r2", "{'v': 2}")]


# -- the mock server's ways of running -------------------------------------------------------------


def test_bare_mock_server_starts_on_first_test_and_closes():
    mock = three_step_graph().to_mock_server()
    try:
        assert mock.test(body={"x": 0}) == {"x": 9, "by": "mul"}
    finally:
        mock.close()
    assert not mock.engine.ready


def test_async_with_and_atest():
    async def main():
        async with three_step_graph().to_mock_server() as mock:
            results = await asyncio.gather(*(mock.atest(body={"x": i}) for i in range(5)))
            with pytest.raises(RuntimeError, match="atest"):
                mock.test(body={"x": 0})
        return results

    assert [r["x"] for r in asyncio.run(main())] == [9, 36, 81, 144, 225]


def test_atest_from_asyncio_run_inside_sync_with():
    with three_step_graph().to_mock_server() as mock:
        assert asyncio.run(mock.atest(body={"x": 1})) == {"x": 36, "by": "mul"}
        assert mock.test(body={"x": 1}) == {"x": 36, "by": "mul"}


def test_sync_test_from_code_running_an_event_loop_as_in_a_notebook():
    async def cell():  # a notebook cell: sync calls while the kernel's loop runs
        with three_step_graph().to_mock_server() as mock:
            return mock.test(body={"x": 1}), await mock.atest(body={"x": 2})

    assert asyncio.run(cell()) == ({"x": 36, "by": "mul"}, {"x": 81, "by": "mul"})


def test_sync_test_from_several_threads_at_once():
    with three_step_graph().to_mock_server() as mock, ThreadPoolExecutor(4) as callers:
        results = list(callers.map(lambda x: mock.test(body={"x": x}), range(20)))
    assert [r["x"] for r in results] == [(3 * (x + 1)) ** 2 for x in range(20)]


def test_closing_stops_a_stream_left_half_read_and_leaves_no_thread_behind():
    closed = threading.Event()
    graph = sg.Graph("endless")
    graph.to(graph_steps.Endless(closed), name="source").respond()
    before = threading.active_count()
    with graph.to_mock_server() as mock:
        chunks = mock.test(body={})
        assert next(chunks) == {"i": 0}
    assert closed.is_set()
    assert threading.active_count() == before
