"""Streaming steps: chunks in order, steps after a stream run per chunk, and chunks arrive while it runs."""

import asyncio
import threading

import graph_steps
import pytest

import servegraph as sg

STREAMERS = [graph_steps.count_up, graph_steps.acount_up]
GATED = [graph_steps.Gated, graph_steps.AsyncGated]


def stream_graph(streamer, after=graph_steps.label_chunk):
    graph = sg.Graph("stream")
    graph.to(name="source", handler=streamer).to(name="label", handler=after).respond()
    return graph


@pytest.mark.parametrize("streamer", STREAMERS)
def test_chunks_arrive_in_order_and_later_steps_run_per_chunk(streamer):
    with stream_graph(streamer).to_mock_server() as mock:
        chunks = mock.test(body={"n": 4})
        assert not isinstance(chunks, list | dict)
        assert list(chunks) == [{"i": i, "label": f"chunk-{i}"} for i in range(4)]


@pytest.mark.parametrize("streamer", STREAMERS)
def test_streaming_responder_by_import_path(streamer):
    graph = sg.Graph("stream")
    graph.to(name="source", handler=f"graph_steps.{streamer.__name__}").respond()
    with graph.to_mock_server() as mock:
        assert list(mock.test(body={"n": 3})) == [{"i": 0}, {"i": 1}, {"i": 2}]


@pytest.mark.parametrize("gated", GATED)
def test_first_chunk_arrives_before_the_generator_finishes(gated):
    gate, finished = threading.Event(), threading.Event()
    graph = sg.Graph("gated")
    graph.to(gated(gate, finished), name="source").to(name="label", handler=graph_steps.label_chunk).respond()
    with graph.to_mock_server() as mock:
        chunks = iter(mock.test(body={}))
        assert next(chunks) == {"i": 0, "label": "chunk-0"}
        assert not finished.is_set()
        gate.set()
        assert list(chunks) == [{"i": 1, "label": "chunk-1"}]
    assert finished.is_set()


@pytest.mark.parametrize("gated", GATED)
def test_async_mock_streams_an_async_iterator(gated):
    gate, finished = threading.Event(), threading.Event()
    graph = sg.Graph("gated")
    graph.to(gated(gate, finished), name="source").to(name="label", handler=graph_steps.label_chunk).respond()

    async def main():
        async with graph.to_mock_server() as mock:
            chunks = await mock.atest(body={})
            assert hasattr(chunks, "__anext__")
            first = await anext(chunks)
            early = finished.is_set()
            gate.set()
            return first, early, [chunk async for chunk in chunks]

    first, early, rest = asyncio.run(main())
    assert first == {"i": 0, "label": "chunk-0"}
    assert not early
    assert rest == [{"i": 1, "label": "chunk-1"}]


@pytest.mark.parametrize("streamer", STREAMERS)
def test_atest_streams_from_asyncio_run_inside_sync_with(streamer):
    async def collect(mock):
        return [chunk async for chunk in await mock.atest(body={"n": 3})]

    with stream_graph(streamer).to_mock_server() as mock:
        assert asyncio.run(collect(mock)) == [{"i": i, "label": f"chunk-{i}"} for i in range(3)]


@pytest.mark.parametrize("streamer", [graph_steps.fail_after_two, graph_steps.afail_after_two])
def test_stream_error_arrives_after_the_chunks_before_it(streamer):
    with stream_graph(streamer).to_mock_server() as mock:
        received = []
        with pytest.raises(ValueError, match="stream broke"):
            for chunk in mock.test(body={}):
                received.append(chunk)
    assert received == [{"i": 0, "label": "chunk-0"}, {"i": 1, "label": "chunk-1"}]


def test_async_stream_error_arrives_after_the_chunks_before_it():
    async def main():
        received = []
        async with stream_graph(graph_steps.afail_after_two).to_mock_server() as mock:
            with pytest.raises(ValueError, match="stream broke"):
                async for chunk in await mock.atest(body={}):
                    received.append(chunk)
        return received

    assert asyncio.run(main()) == [{"i": 0, "label": "chunk-0"}, {"i": 1, "label": "chunk-1"}]


def test_stream_chunks_with_result_path_keep_the_rest_of_the_body():
    graph = sg.Graph("stream")
    graph.to(name="source", handler=graph_steps.count_up, result_path="chunk").respond()
    with graph.to_mock_server() as mock:
        assert list(mock.test(body={"n": 2})) == [{"n": 2, "chunk": {"i": 0}}, {"n": 2, "chunk": {"i": 1}}]


@pytest.mark.parametrize("endless", [graph_steps.Endless, graph_steps.AsyncEndless])
def test_stopping_early_closes_the_generator(endless):
    closed = threading.Event()
    graph = sg.Graph("endless")
    graph.to(endless(closed), name="source").respond()
    with graph.to_mock_server() as mock:
        chunks = mock.test(body={})
        assert [next(chunks) for _ in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]
        chunks.close()
        assert closed.wait(5)


def test_stream_false_collects_the_chunks():
    with stream_graph(graph_steps.count_up).to_mock_server() as mock:
        assert mock.test(body={"n": 2}, stream=False) == [{"i": 0, "label": "chunk-0"}, {"i": 1, "label": "chunk-1"}]
