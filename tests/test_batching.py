"""Dynamic batching (`predict_batch`) and admission control (`max_queued`), on a served graph."""

from __future__ import annotations

import asyncio
import time

import grpc
import model_zoo
import numpy as np
import pytest
from servers import serve

import servegraph as sg
from servegraph.clients import AsyncClient

grpcclient_aio = pytest.importorskip("tritonclient.grpc.aio")


@pytest.fixture(scope="module")
def served():
    with serve("served_models:batching") as router:
        yield router


async def _concurrently(address: str, bodies: list[dict]) -> list:
    async with AsyncClient(address, timeout=30) as client:
        return await asyncio.gather(*(client.invoke(body) for body in bodies), return_exceptions=True)


@pytest.mark.parametrize("mechanism", ["dedicated_process", "thread_pool"])
def test_concurrent_calls_run_in_batches_and_each_gets_its_own_result(served, mechanism):
    results = asyncio.run(_concurrently(served.address, [{"models": [mechanism], "x": i} for i in range(10)]))
    assert [result["x"] for result in results] == list(range(10))
    sizes = [result["batch"] for result in results]
    assert max(sizes) <= 4
    assert max(sizes) > 1, f"no call was batched: {sizes}"


def test_a_failing_batch_fails_each_of_its_calls_with_the_cause(served):
    bodies = [{"models": ["dedicated_process"], "x": i, "fail": i == 0} for i in range(4)]
    results = asyncio.run(_concurrently(served.address, bodies))
    failed = [result for result in results if isinstance(result, sg.ServingError)]
    assert failed and all("refused" in str(error) for error in failed)
    assert all(isinstance(result, sg.ServingError) or result["batch"] < 4 for result in results)
    after = asyncio.run(_concurrently(served.address, [{"models": ["dedicated_process"], "x": 7}]))
    assert after[0]["x"] == 7


def test_v2_model_infer_calls_batch_too(served):
    async def infer_all() -> list:
        client = grpcclient_aio.InferenceServerClient(url=served.address)
        try:

            async def one(i: int):
                tensor = grpcclient_aio.InferInput("x", [2], "FP32")
                tensor.set_data_from_numpy(np.array([i, i + 0.5], dtype=np.float32))
                return await client.infer("tensors", [tensor])

            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await client.close()

    results = asyncio.run(infer_all())
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.as_numpy("doubled"), np.array([2 * i, 2 * i + 1], dtype=np.float32))
    assert max(int(result.as_numpy("batch")[0]) for result in results) > 1


def test_past_max_queued_calls_fail_at_once_and_queued_ones_complete(served):
    bodies = [{"models": ["bounded"], "seconds": 0.5, "n": i} for i in range(6)]

    async def run() -> list[tuple[float, object]]:
        async with AsyncClient(served.address, timeout=30) as client:
            started = time.monotonic()

            async def timed(body: dict) -> tuple[float, object]:
                try:
                    result: object = await client.invoke(body)
                except sg.ServingError as error:
                    result = error
                return time.monotonic() - started, result

            calls = []
            for body in bodies:
                calls.append(asyncio.create_task(timed(body)))
                await asyncio.sleep(0.02)  # in order: one runs, two wait, three are refused
            return await asyncio.gather(*calls)

    outcomes = asyncio.run(run())
    assert [result["n"] for _, result in outcomes[:3]] == [0, 1, 2]
    for elapsed, error in outcomes[3:]:
        assert isinstance(error, sg.ServingError)
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.name
        assert "'bounded'" in str(error) and "max_queued=2" in str(error)
        assert elapsed < 0.5, "a refused call fails at once, not after the running one"


def test_batch_parameters_are_checked_when_the_graph_is_built():
    runner = sg.ModelRunnerStep(name="runner")
    with pytest.raises(sg.GraphError, match="max_batch_size"):
        runner.add_model("m", sg.Model, execution_mechanism="naive", max_batch_size=0)
    with pytest.raises(sg.GraphError, match="max_queued"):
        runner.add_model("m", sg.Model, execution_mechanism="naive", max_queued=-1)


def test_an_async_model_runs_every_call_at_once_so_none_waits_in_a_queue():
    graph = sg.Graph("async-unqueued")
    runner = sg.ModelRunnerStep(name="runner")
    runner.add_model("slow", model_zoo.AsyncSlow, execution_mechanism="asyncio", max_queued=2)
    graph.to(runner).respond()

    async def run() -> list:
        async with graph.to_mock_server() as mock:
            return await asyncio.gather(*(mock.atest(body={"sleep": 0.05}) for _ in range(10)))

    assert len(asyncio.run(run())) == 10
