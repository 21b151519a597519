"""ModelRunnerStep through the mock server: every execution mechanism, output shapes, selectors,
shared models behind proxies, state and loads per process, validation, timeouts and streaming."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import model_zoo
import numpy as np
import pytest
from served_models import IN_ROUTER, IN_WORKERS, MECHANISMS, PROXIES, build_tokens, build_zoo

import servegraph as sg

ME = os.getpid()


def children() -> set[int]:
    """Live (non-zombie) child processes of this test process, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ME and fields[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def zoo():
    with build_zoo().to_mock_server() as mock:
        yield mock


def runner_graph(*models, selector=None, raise_exception=True, name="g") -> sg.Graph:
    """A graph of one ModelRunnerStep; `models` are (endpoint, class, mechanism, params) tuples."""
    graph = sg.Graph(name)
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector=selector, raise_exception=raise_exception)
    for endpoint, model_class, mechanism, *params in models:
        runner.add_model(endpoint, model_class, execution_mechanism=mechanism, **(params[0] if params else {}))
    graph.to(runner).respond()
    return graph


# -- every mechanism, output shapes -----------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_one_selected_model_gives_its_result_as_the_body(zoo, mechanism):
    body = {"models": [mechanism], "x": [1, 2]}
    result = zoo.test(body=body)
    assert result["model"] == mechanism
    assert result["tag"] == f"tag-{mechanism}"  # model parameters reach the constructor
    assert result["body"] == body
    assert result["loads"] == 1
    assert (result["pid"] == ME) == (mechanism in IN_ROUTER)


def test_several_selected_models_give_a_dict_by_endpoint(zoo):
    result = zoo.test(body={"models": ["naive", "dedicated_process", "legal"], "q": 1})
    assert set(result) == {"naive", "dedicated_process", "legal"}
    assert result["naive"]["model"] == "naive" and result["dedicated_process"]["body"]["q"] == 1
    assert result["legal"]["endpoint"] == "legal"


def test_no_selection_runs_every_endpoint_and_proxy(zoo):
    result = zoo.test(body={"q": 2})
    assert set(result) == {*MECHANISMS, *PROXIES}
    worker_pids = {result[name]["pid"] for name in (*IN_WORKERS, *PROXIES)}
    assert ME not in worker_pids
    assert {result[name]["pid"] for name in IN_ROUTER} == {ME}


def test_an_empty_selection_runs_no_model_and_returns_at_once(zoo):
    started = time.monotonic()
    assert zoo.test(body={"models": []}) == {}
    assert time.monotonic() - started < 2


def test_an_unknown_selected_name_is_an_error(zoo):
    with pytest.raises(sg.ServingError, match=r"unknown models \['nope'\]"):
        zoo.test(body={"models": ["nope"]})


def test_async_mock_runs_every_mechanism_concurrently():
    bodies = [{"models": [mechanism], "i": i} for i in range(4) for mechanism in MECHANISMS]

    async def main():
        async with build_zoo(pool_size=1).to_mock_server() as mock:
            results = await asyncio.gather(*(mock.atest(body=body) for body in bodies))
            return results, await mock.atest(body={})

    results, everything = asyncio.run(main())
    assert [(r["model"], r["body"]["i"]) for r in results] == [(b["models"][0], b["i"]) for b in bodies]
    assert set(everything) == {*MECHANISMS, *PROXIES}


# -- state and loads per process ----------------------------------------------------------------


@pytest.mark.parametrize("mechanism", IN_WORKERS)
def test_worker_models_keep_state_across_calls(zoo, mechanism):
    by_pid: dict[int, list[int]] = {}
    for _ in range(6):
        result = zoo.test(body={"models": [mechanism]})
        by_pid.setdefault(result["pid"], []).append(result["calls"])
    for calls in by_pid.values():  # each process counts its own calls, one by one: no copy per call
        assert calls == list(range(calls[0], calls[0] + len(calls)))
    assert sum(len(calls) for calls in by_pid.values()) == 6


def test_load_runs_once_per_worker_process_and_never_in_the_router(zoo):
    pool = {}
    for _ in range(8):
        result = zoo.test(body={"models": ["process_pool"]})
        pool[result["pid"]] = result["loads"]
    assert len(pool) == 2 and set(pool.values()) == {1}  # max_processes=2: two processes, each loaded once
    assert ME not in pool
    # the router (this process) loaded only the in-router models
    for name in IN_ROUTER:
        assert model_zoo.LOADS[name] >= 1
    for name in (*IN_WORKERS, "assistant"):
        assert model_zoo.LOADS[name] == 0


# -- shared models ------------------------------------------------------------------------------


def test_a_shared_model_loads_once_and_learns_each_proxy(zoo):
    result = zoo.test(body={"models": list(PROXIES), "q": "hi"})
    assert set(result) == set(PROXIES)
    for name, uri in PROXIES.items():
        assert result[name]["endpoint"] == name
        assert result[name]["uri"] == uri
        assert result[name]["prompt"] == f"You are a {name} assistant"
        assert result[name]["body"] == {"models": list(PROXIES), "q": "hi"}
    assert len({r["pid"] for r in result.values()}) == 1
    assert {r["loads"] for r in result.values()} == {1}


def shared_graph(proxies: int, mechanism: str = "dedicated_process") -> sg.Graph:
    graph = sg.Graph("shared")
    graph.add_shared_model("llm", model_zoo.Shared, mechanism, result_path="out")
    runner = sg.ModelRunnerStep(name="runner")
    for i in range(proxies):
        runner.add_shared_model_proxy(f"p{i}", f"store://prompt-{i}", shared_model_name="llm")
    graph.to(runner).respond()
    return graph


def test_more_proxies_add_no_process():
    before = children()
    for proxies in (1, 3):
        with shared_graph(proxies).to_mock_server() as mock:
            started = children() - before
            result = mock.test(body={"q": 1})
        assert len(started) == 1, f"{proxies} proxies started {len(started)} processes"
        outputs = [result["out"]] if proxies == 1 else [result[f"p{i}"]["out"] for i in range(proxies)]
        assert {out["pid"] for out in outputs} == started
        assert [out["uri"] for out in outputs] == [f"store://prompt-{i}" for i in range(proxies)]
        assert {out["loads"] for out in outputs} == {1}
    assert children() == before


def test_a_shared_model_in_the_router_also_learns_the_proxy():
    with shared_graph(2, "thread_pool").to_mock_server() as mock:
        result = mock.test(body={"q": 1})
    assert [result[name]["out"]["endpoint"] for name in ("p0", "p1")] == ["p0", "p1"]
    assert result["p0"]["out"]["pid"] == ME


# -- selectors ----------------------------------------------------------------------------------

LABELLED = (("cheap", "naive", "low"), ("fast", "thread_pool", "low"), ("big", "asyncio", "high"))


def labelled_graph(selector) -> sg.Graph:
    graph = sg.Graph("labels")
    runner = sg.ModelRunnerStep(name="runner", model_runner_selector=selector)
    for name, mechanism, tier in LABELLED:
        model = model_zoo.AsyncEcho if mechanism == "asyncio" else model_zoo.Echo
        runner.add_model(name, model, execution_mechanism=mechanism, labels={"tier": tier})
    graph.to(runner).respond()
    return graph


@pytest.mark.parametrize(
    "selector", [model_zoo.ByLabel, model_zoo.ByLabel("tier"), "model_zoo.ByLabel"], ids=["class", "instance", "path"]
)
def test_selector_as_class_instance_or_import_path(selector):
    with labelled_graph(selector).to_mock_server() as mock:
        assert set(mock.test(body={"tier": "low"})) == {"cheap", "fast"}
        assert mock.test(body={"tier": "high"})["model"] == "big"  # one model: its result is the body
        assert mock.test(body={"tier": "none"}) == {}


def test_selector_returning_none_runs_all_and_async_selectors_work():
    with labelled_graph(model_zoo.PickByKey).to_mock_server() as mock:
        assert set(mock.test(body={})) == {"cheap", "fast", "big"}
    with labelled_graph(model_zoo.AsyncPick()).to_mock_server() as mock:
        assert mock.test(body={"only": "fast"})["model"] == "fast"


# -- failures -----------------------------------------------------------------------------------

FAILING = (
    ("f_naive", model_zoo.Failing, "naive"),
    ("f_asyncio", model_zoo.AsyncFailing, "asyncio"),
    ("f_thread", model_zoo.Failing, "thread_pool"),
    ("f_pool", model_zoo.Failing, "process_pool"),
    ("f_dedicated", model_zoo.Failing, "dedicated_process"),
)


@pytest.fixture(scope="module")
def failing():
    graph = runner_graph(
        *FAILING, ("ok", model_zoo.Echo, "dedicated_process"), selector=model_zoo.PickByKey, raise_exception=False
    )
    graph["runner"].configure_pool_resource(max_processes=1)
    with graph.to_mock_server() as mock:
        yield mock


def test_without_raise_exception_failing_models_give_an_error_entry(failing):
    result = failing.test(body={"x": 7})
    for name, *_ in FAILING:
        assert result[name] == {"error": "ValueError: bad input 7"}, name
    assert result["ok"]["body"] == {"x": 7}
    assert failing.test(body={"x": 8, "models": ["f_pool"]}) == {"error": "ValueError: bad input 8"}


@pytest.mark.parametrize("name", [name for name, *_ in FAILING])
def test_with_raise_exception_a_failing_model_fails_the_event(name):
    graph = runner_graph(*(m for m in FAILING if m[0] == name), ("ok", model_zoo.Echo, "naive"))
    with graph.to_mock_server() as mock, pytest.raises(Exception, match=r"bad input 3") as error:
        mock.test(body={"x": 3})
    assert any("raised in step 'runner'" in note for note in getattr(error.value, "__notes__", []))


# -- pre/postprocess ------------------------------------------------------------------------------


def test_preprocess_and_postprocess_run_beside_the_model():
    graph = runner_graph(
        ("here", model_zoo.Wrapped, "naive"), ("there", model_zoo.Wrapped, "dedicated_process"), name="wrapped"
    )
    with graph.to_mock_server() as mock:
        result = mock.test(body={"x": 1})
    for name in ("here", "there"):
        out = result[name]
        assert out["post"] == out["result"]["pid"] == out["result"]["body"]["pre"]
        assert out["result"]["body"]["x"] == 1
    assert result["here"]["post"] == ME and result["there"]["post"] != ME


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "mechanism", "missing"),
    [(model_zoo.NoAsync, "asyncio", "predict_async"), (model_zoo.AsyncEcho, "thread_pool", "predict")],
)
def test_a_model_without_the_predict_its_mechanism_calls_is_refused_at_start(model, mechanism, missing):
    graph = sg.Graph("refused")
    graph.to(sg.ModelRunnerStep(name="r")).respond().add_model("m", model, execution_mechanism=mechanism)
    mock = graph.to_mock_server()
    message = f"m is running with {mechanism} execution_mechanism but {missing}() is not implemented"
    with pytest.raises(sg.ModelRunnerError, match=re.escape(message)) as refused:
        mock.start()
    assert isinstance(refused.value, sg.GraphError) and refused.value.models_errors == {"m": message}


def test_endpoint_names_are_unique_in_a_step_and_across_the_graph():
    runner = sg.ModelRunnerStep(name="a").add_model("m", model_zoo.Echo, execution_mechanism="naive")
    with pytest.raises(sg.GraphError, match="already has a model endpoint named 'm'"):
        runner.add_shared_model_proxy("m", shared_model_name="s")
    graph = sg.Graph("dup")
    second = graph.to(runner).to(sg.ModelRunnerStep(name="b")).respond()
    with pytest.raises(sg.GraphError, match="'m' is declared in steps 'a' and 'b'"):
        second.add_model("m", model_zoo.Echo, execution_mechanism="naive")
    other = sg.ModelRunnerStep(name="c").add_model("m", model_zoo.Echo, execution_mechanism="naive")
    with pytest.raises(sg.GraphError, match="'m' is declared in steps 'a' and 'c'"):
        graph.add_step(other, after="b")
    router = graph.add_step(sg.RouterStep(name="routes"), after="b")
    with pytest.raises(sg.GraphError, match="'m' is declared in steps 'a' and 'routes'"):
        router.add_route("m", model_zoo.Echo)


def test_an_endpoint_may_not_take_a_shared_model_name():
    graph = sg.Graph("clash")
    graph.add_shared_model("llm", model_zoo.Shared, "naive")
    runner = sg.ModelRunnerStep(name="runner").add_model("llm", model_zoo.Echo, execution_mechanism="naive")
    runner.add_shared_model_proxy("proxy", shared_model_name="llm")
    graph.to(runner).respond()
    with pytest.raises(sg.GraphError, match="'llm' has the name of a shared model"):
        graph.to_mock_server().start()
    ok = sg.Graph("proxy-named-like-its-model")  # a proxy may carry its shared model's name
    ok.add_shared_model("llm", model_zoo.Shared, "naive")
    ok.to(sg.ModelRunnerStep(name="runner")).respond().add_shared_model_proxy("llm", "uri", shared_model_name="llm")
    with ok.to_mock_server() as mock:
        assert mock.test(body={})["endpoint"] == "llm"


def test_bad_model_declarations_are_graph_errors():
    runner = sg.ModelRunnerStep(name="r")
    with pytest.raises(sg.GraphError, match="execution_mechanism is required"):
        runner.add_model("m", model_zoo.Echo)
    with pytest.raises(sg.GraphError, match="'gpu' is not one of"):
        runner.add_model("m", model_zoo.Echo, execution_mechanism="gpu")
    with pytest.raises(sg.GraphError, match="Model subclass"):
        runner.add_model("m", dict, execution_mechanism="naive")
    with pytest.raises(sg.GraphError, match=r"cannot import model class 'model_zoo\.Nope'"):
        runner.add_model("m", "model_zoo.Nope", execution_mechanism="naive")

    class Local(sg.Model):
        def predict(self, body):
            return body

    runner.add_model("local", Local, execution_mechanism="thread_pool")  # fine in the router
    with pytest.raises(sg.GraphError, match="define it at the top level"):
        runner.add_model("local2", Local, execution_mechanism="dedicated_process")
    with pytest.raises(sg.GraphError, match="parameters must be JSON values"):
        runner.add_model("m", model_zoo.Echo, execution_mechanism="process_pool", tag=object())
    with pytest.raises(sg.GraphError, match="shared_model_name is required"):
        runner.add_shared_model_proxy("p")
    runner.add_shared_model_proxy("p", shared_model_name="missing")
    graph = sg.Graph("bad")
    with pytest.raises(sg.GraphError, match="Can't find shared model named missing"):
        graph.to(runner)
    attached = graph.to(sg.ModelRunnerStep(name="attached"))
    with pytest.raises(sg.GraphError, match="Can't find shared model named missing"):
        attached.add_shared_model_proxy("q", shared_model_name="missing")


# -- timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "mechanism"),
    [(model_zoo.Slow, "dedicated_process"), (model_zoo.Slow, "thread_pool"), (model_zoo.AsyncSlow, "asyncio")],
)
def test_a_model_timeout_bounds_each_call(model, mechanism):
    graph = runner_graph(("slow", model, mechanism, {"timeout": 0.3}), name="timeouts")
    with graph.to_mock_server() as mock:
        assert mock.test(body={"sleep": 0})["slept"] == 0
        started = time.monotonic()
        with pytest.raises(sg.DeadlineExceeded, match=r"model 'slow' did not answer within its 0.3s timeout"):
            mock.test(body={"sleep": 1.5})
        assert time.monotonic() - started < 1.2
        deadline = time.monotonic() + 5  # a sync predict runs on; the model answers again once it is done
        while True:
            try:
                assert mock.test(body={"sleep": 0})["slept"] == 0
                break
            except sg.DeadlineExceeded:
                assert time.monotonic() < deadline
                time.sleep(0.1)


# -- streaming ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens():
    with build_tokens().to_mock_server() as mock:
        yield mock


def test_a_generator_predict_in_a_worker_streams_chunks_as_they_are_made(tokens):
    arrivals = []
    for chunk in tokens.test(body={"n": 3, "delay": 0.3}, stream=True):
        arrivals.append((time.time(), chunk))
    assert [chunk["i"] for _, chunk in arrivals] == [0, 1, 2]
    assert arrivals[0][1]["pid"] != ME
    assert arrivals[0][0] < arrivals[-1][1]["at"], "the first chunk must arrive before the generator finishes"


def test_a_unary_call_to_a_streaming_model_gets_all_chunks(tokens):
    assert [chunk["i"] for chunk in tokens.test(body={"n": 4})] == [0, 1, 2, 3]


def test_async_mock_streams_a_worker_model_and_closing_stops_it():
    async def main():
        async with build_tokens().to_mock_server() as mock:
            chunks = await mock.atest(body={"n": 3, "delay": 0.01}, stream=True)
            assert [chunk["i"] async for chunk in chunks] == [0, 1, 2]
            stream = await mock.atest(body={"n": 1000, "delay": 0.01}, stream=True)
            assert (await anext(stream))["i"] == 0
            await stream.aclose()  # the worker's generator stops: the next call is not held up behind it
            started = time.monotonic()
            assert len(await mock.atest(body={"n": 2}, stream=False)) == 2
            return time.monotonic() - started

    assert asyncio.run(main()) < 3


@pytest.mark.parametrize("mechanism", IN_WORKERS)
def test_many_concurrent_calls_on_workers_each_get_their_own_answer(mechanism):
    """Calls in flight together share a worker's stream (several to a message): none may get another's answer."""
    rng = np.random.default_rng(7)
    bodies = [
        {"x": rng.standard_normal(int(n)).astype(np.float32), "by": i} for i, n in enumerate(rng.integers(1, 5000, 60))
    ]

    async def main():
        graph = runner_graph(("scale", model_zoo.Scale, mechanism), name=f"scale-{mechanism}")
        async with graph.to_mock_server() as mock:
            return await asyncio.gather(*(mock.atest(body=body) for body in bodies))

    for body, result in zip(bodies, asyncio.run(main()), strict=True):
        assert result["by"] == body["by"]
        np.testing.assert_array_equal(result["y"], body["x"] * body["by"])
        assert result["sum"] == pytest.approx(float(body["x"].sum()))


@pytest.mark.parametrize("mechanism", IN_WORKERS)
def test_a_result_the_codec_cannot_carry_fails_that_call_alone(mechanism):
    graph = runner_graph(("unsendable", model_zoo.Unsendable, mechanism), name=f"unsendable-{mechanism}")
    with graph.to_mock_server() as mock:
        with pytest.raises(sg.ServingError, match="result cannot be sent back: cannot encode a set") as failure:
            mock.test(body={"unsendable": True})
        assert failure.value.code == "INTERNAL"
        assert mock.test(body={"x": 1}) == {"x": 1}  # the worker's call stream is still up


@pytest.mark.parametrize("mechanism", IN_WORKERS)
def test_a_stream_chunk_the_codec_cannot_carry_ends_the_stream_as_internal(mechanism):
    graph = runner_graph(("unsendable", model_zoo.UnsendableStream, mechanism), name=f"unsendable-stream-{mechanism}")
    with graph.to_mock_server() as mock:
        chunks = mock.test(body={}, stream=True)
        assert next(chunks) == {"i": 0}
        with pytest.raises(sg.ServingError, match="result cannot be sent back: cannot encode a set") as failure:
            next(chunks)
        assert failure.value.code == "INTERNAL"
