"""Graphs that the router tests serve with `servegraph serve served_graphs:<name>`."""

from __future__ import annotations

import asyncio
import time

import numpy as np

import servegraph as sg


def clean(body: dict) -> dict:
    if not isinstance(body, dict) or "question" not in body:
        raise sg.InvalidArgument("body must be an object with a 'question' field")
    return {**body, "question": body["question"].strip()}


class Answer:
    def __init__(self, prefix: str = "A"):
        self.prefix = prefix

    def do(self, body: dict) -> dict:
        return {**body, "answer": f"{self.prefix}: {body['question']}"}


async def stamp(body: dict) -> dict:
    return {**body, "steps": 3}


def fail(body: dict) -> dict:
    if body.get("fail"):
        raise ValueError(f"asked to fail: {body['fail']}")
    if body.get("unsendable"):
        return {**body, "tags": {"a", "b"}}  # a set: no JSON, no codec
    return body


async def slow(body: dict) -> dict:
    await asyncio.sleep(float(body.get("sleep", 0)))
    return body


def tensor_stats(body: dict) -> dict:
    array = body["x"]
    return {"sum": float(np.sum(array)), "shape": list(array.shape), "doubled": array * 2, "raw": body.get("raw", b"")}


async def count(body: dict):
    """Yields `n` chunks, `delay` seconds apart, so tests can see chunks arrive before the end."""
    for i in range(int(body.get("n", 3))):
        if i:
            await asyncio.sleep(float(body.get("delay", 0)))
        yield {"i": i, "at": time.time()}


class Loop(sg.Choice):
    def select_outlets(self, body: dict) -> list[str]:
        return ["bump"] if body["n"] < body.get("until", 3) else ["out"]


def bump(body: dict) -> dict:
    return {**body, "n": body["n"] + 1}


flow = sg.Graph("flow")
flow.to(name="clean", handler=clean).to(Answer, name="answer", prefix="Q").to(name="stamp", handler=stamp).to(
    name="fail", handler=fail
).to(name="slow", handler=slow).respond()

tensors = sg.Graph("tensors")
tensors.to(name="stats", handler=tensor_stats).respond()

streaming = sg.Graph("streaming")
streaming.to(name="count", handler=count).respond()

router = sg.Graph("router")
routes = router.to(sg.RouterStep(name="models"))
routes.add_route("upper", handler=str.upper)
routes.add_route("answer", class_name=Answer, prefix="R")
routes.respond()

cyclic = sg.Graph("cyclic", allow_cyclic=True, max_iterations=10)
cyclic.to(name="bump", handler=bump).to(Loop, name="loop").cycle_to("bump").to(name="out", handler=dict).respond()
