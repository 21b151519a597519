"""Step functions and classes for the tests, used both as objects and by import path ("graph_steps.Name")."""

from __future__ import annotations

import asyncio
import threading

import servegraph as sg

# -- plain functions -----------------------------------------------------------------------------


def add_one(body):
    return {**body, "x": body["x"] + 1}


def double(body):
    return {**body, "x": body["x"] * 2}


async def async_square(body):
    await asyncio.sleep(0)
    return {**body, "x": body["x"] ** 2}


def tag(body):
    return f"tag:{body}"


def increment(value):
    return value + 1


def with_context(body, context):
    return {**body, "graph": context.graph_name}


def describe_event(event: sg.Event):
    return {"id": event.id, "path": event.path, "body": event.body, "is_event": isinstance(event, sg.Event)}


def fail(body):
    raise ValueError(f"bad input {body!r}")


def echo(body):
    return body


# -- classes -------------------------------------------------------------------------------------


class Multiply:
    def __init__(self, factor=1, name=None):
        self.factor = factor
        self.name = name

    def do(self, body):
        return {**body, "x": body["x"] * self.factor, "by": self.name}


class EventReader:
    """full_event=True picks do_event over do."""

    def do(self, body):
        raise AssertionError("do() called on a full_event step")

    def do_event(self, event):
        event.body = {"seen_id": event.id, "seen_path": event.path, "x": event.body["x"]}
        return event


class ContextAware:
    def __init__(self, context=None, prefix=""):
        self.context = context
        self.prefix = prefix

    def do(self, body):
        return f"{self.prefix}{self.context.graph_name}:{body}"


class Recorder:
    """Records what it receives into a list the test owns, then passes the body on (or mutates it)."""

    def __init__(self, log, label, mutate=False):
        self.log = log
        self.label = label
        self.mutate = mutate

    def do(self, body):
        if self.mutate:
            body["touched_by"] = self.label
            body["items"].append(self.label)
        self.log.append((self.label, repr(body)))
        return body


# -- cycles ----------------------------------------------------------------------------------------


class Generator:
    """Appends a draft each time it runs; counts its runs for the test."""

    def __init__(self, runs=None):
        self.runs = runs if runs is not None else []

    def do(self, body):
        self.runs.append(len(body["drafts"]))
        return {**body, "drafts": [*body["drafts"], f"draft{len(body['drafts']) + 1}"]}


class Evaluator:
    """A class step that routes: back to the generator until `good_after` drafts exist, then Complete."""

    def __init__(self, good_after=3, back_to="gen"):
        self.good_after = good_after
        self.back_to = back_to

    def do(self, body):
        return body

    def select_outlets(self, body):
        return "Complete" if len(body["drafts"]) >= self.good_after else [self.back_to]


class Judge(sg.Choice):
    """Choice subclass: passes the body through unchanged and picks the next step."""

    def select_outlets(self, body):
        return ["Complete"] if len(body["drafts"]) >= body["want"] else ["gen"]


class NeverSatisfied(sg.Choice):
    def select_outlets(self, body):
        return ["gen"]


class BadOutlet(sg.Choice):
    def select_outlets(self, body):
        return ["no_such_step"]


def draft(body):
    return {**body, "drafts": [*body["drafts"], "d"]}


# -- streaming -------------------------------------------------------------------------------------


def count_up(body):
    for i in range(body["n"]):
        yield {"i": i}


async def acount_up(body):
    for i in range(body["n"]):
        await asyncio.sleep(0)
        yield {"i": i}


def fail_after_two(body):
    yield {"i": 0}
    yield {"i": 1}
    raise ValueError("stream broke")


async def afail_after_two(body):
    yield {"i": 0}
    yield {"i": 1}
    raise ValueError("stream broke")


def label_chunk(body):
    return {**body, "label": f"chunk-{body['i']}"}


class Gated:
    """Yields one chunk, then waits for the test to set `gate` (received chunk 1) before the next."""

    def __init__(self, gate: threading.Event, finished: threading.Event, timeout=5.0):
        self.gate = gate
        self.finished = finished
        self.timeout = timeout

    def do(self, body):
        yield {"i": 0}
        if not self.gate.wait(self.timeout):
            raise TimeoutError("chunk 1 was not received while the generator was still running")
        yield {"i": 1}
        self.finished.set()


class AsyncGated(Gated):
    async def do(self, body):
        yield {"i": 0}
        if not await asyncio.to_thread(self.gate.wait, self.timeout):
            raise TimeoutError("chunk 1 was not received while the generator was still running")
        yield {"i": 1}
        self.finished.set()


# -- errors ----------------------------------------------------------------------------------------


def on_error(event: sg.Event):
    return {"error": event.error, "origin": event.origin_state, "id": event.id}


def recover(event: sg.Event):
    event.body = {"recovered_from": event.origin_state, "x": 0}
    return event


def broken_handler(event: sg.Event):
    raise KeyError("handler broke too")


# -- routers -----------------------------------------------------------------------------------------


class Model:
    def __init__(self, name=None, scale=1):
        self.name = name
        self.scale = scale

    def do(self, body):
        return {"model": self.name, "y": body["x"] * self.scale}


class Endless:
    """Streams until closed; records that its generator was closed (the caller stopped reading)."""

    def __init__(self, closed: threading.Event):
        self.closed = closed

    def do(self, body):
        try:
            i = 0
            while True:
                yield {"i": i}
                i += 1
        finally:
            self.closed.set()


class AsyncEndless(Endless):
    async def do(self, body):
        try:
            i = 0
            while True:
                await asyncio.sleep(0)
                yield {"i": i}
                i += 1
        finally:
            self.closed.set()
