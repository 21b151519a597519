"""Models and selectors for the model tests, importable by path ("model_zoo.Name") from worker processes.

Every model reports where it ran (``pid``), how often `load` ran in that process (``loads``) and how
many calls this instance has answered (``calls``), so tests can tell in-router from worker models,
see state kept across calls and count loads per process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import Counter

import numpy as np

import servegraph as sg

LOADS: Counter[str] = Counter()
"""How many times `load` ran in this process, per model name."""


class Echo(sg.Model):
    """Returns the body with where and how often it ran; ``tag`` is a model parameter."""

    def load(self) -> None:
        LOADS[self.name] += 1
        self.calls = 0
        self.lock = threading.Lock()  # not picklable: the instance must stay where it loaded

    def report(self, body):
        with self.lock:
            self.calls += 1
            calls = self.calls
        return {
            "model": self.name,
            "pid": os.getpid(),
            "loads": LOADS[self.name],
            "calls": calls,
            "tag": self.get_param("tag"),
            "loaded_here": sorted(LOADS),  # every model loaded in this process
            "body": body,
        }

    def predict(self, body):
        return self.report(body)


class AsyncEcho(Echo):
    """Only `predict_async` (runs on the event loop of its process)."""

    predict = sg.Model.predict

    async def predict_async(self, body):
        await asyncio.sleep(0)
        return self.report(body)


class Failing(sg.Model):
    def predict(self, body):
        raise ValueError(f"bad input {body.get('x')}")


class AsyncFailing(sg.Model):
    async def predict_async(self, body):
        raise ValueError(f"bad input {body.get('x')}")


class Slow(sg.Model):
    """Sleeps ``body["sleep"]`` seconds, then reports its pid."""

    def predict(self, body):
        time.sleep(float(body.get("sleep", 0)))
        return {"pid": os.getpid(), "slept": body.get("sleep", 0)}


class AsyncSlow(sg.Model):
    prefer_async = True  # its predict_async serves many calls at once, in a worker too

    async def predict_async(self, body):
        await asyncio.sleep(float(body.get("sleep", 0)))
        return {"pid": os.getpid(), "slept": body.get("sleep", 0)}


class Blocking(sg.Model):
    """An async predict that blocks its event loop: ``time.sleep(body["block"])`` (a model done wrong)."""

    prefer_async = True

    async def predict_async(self, body):
        time.sleep(float(body.get("block", 0)))
        return {"pid": os.getpid()}


class AsyncSerial(sg.Model):
    """An async predict that serves one call at a time (as a model guarding a device would)."""

    prefer_async = True

    def load(self) -> None:
        self.lock = asyncio.Lock()

    async def predict_async(self, body):
        async with self.lock:
            await asyncio.sleep(float(body.get("sleep", 0)))
        return {"pid": os.getpid()}


class Wrapped(Echo):
    """preprocess and postprocess run around predict, in the model's own process."""

    def preprocess(self, body):
        return {**body, "pre": os.getpid()}

    def postprocess(self, result):
        return {"post": os.getpid(), "result": result}


class Shared(sg.Model):
    """A shared model: learns which proxy a call came through."""

    def load(self) -> None:
        LOADS[self.name] += 1

    def predict(self, body, endpoint=None, model_artifact=None):
        time.sleep(float(body.get("sleep", 0)))
        return {
            "endpoint": endpoint,
            "uri": model_artifact.uri if model_artifact else None,
            "prompt": model_artifact.meta.get("prompt") if model_artifact else None,
            "pid": os.getpid(),
            "loads": LOADS[self.name],
            "body": body,
        }


class Tokens(sg.Model):
    """A generator predict: ``n`` chunks, ``delay`` seconds apart, each stamped with when it was made
    (and ``pad`` bytes of padding, when asked)."""

    def predict(self, body):
        padding = "." * int(body.get("pad", 0))
        for i in range(int(body.get("n", 3))):
            if i:
                time.sleep(float(body.get("delay", 0)))
            chunk = {"i": i, "at": time.time(), "pid": os.getpid()}
            if padding:
                chunk["pad"] = padding
            yield chunk


class Printer(sg.Model):
    """Writes to stdout and stderr, which the router relays to its log prefixed with the endpoint."""

    def load(self) -> None:
        print(f"printer loading in {os.getpid()}", flush=True)

    def predict(self, body):
        print(f"stdout says {body.get('word')}")
        print(f"stderr says {body.get('word')}", file=sys.stderr)
        return {"pid": os.getpid()}


class BadLoad(sg.Model):
    def load(self) -> None:
        raise RuntimeError("weights are missing")

    def predict(self, body):
        return body


class NoAsync(sg.Model):
    """Has `predict` only: cannot run with the asyncio mechanism."""

    def predict(self, body):
        return body


class Crunch(sg.Model):
    """CPU-bound numpy work (a few ms per call with one BLAS thread)."""

    def load(self) -> None:
        rng = np.random.default_rng(0)
        self.matrix = rng.standard_normal((self.get_param("size", 160),) * 2)

    def predict(self, body):
        m = self.matrix
        for _ in range(int(body.get("rounds", 4))):
            m = np.linalg.inv(m @ m.T + np.eye(len(m))) @ self.matrix
        return {"pid": os.getpid(), "trace": float(np.trace(m))}


# -- selectors ------------------------------------------------------------------------------------


class PickByKey(sg.ModelSelector):
    """Runs the models named in ``body["models"]`` (absent: all)."""

    def select(self, event, available_models):
        return event.body.get("models") if isinstance(event.body, dict) else None


class ByLabel(sg.ModelSelector):
    """Runs the models whose label ``key`` equals the body's value for it."""

    def __init__(self, key: str = "tier"):
        self.key = key

    def select(self, event, available_models):
        wanted = event.body.get(self.key)
        return [name for name in available_models if name.labels.get(self.key) == wanted]


class AsyncPick(sg.ModelSelector):
    async def select(self, event, available_models):
        await asyncio.sleep(0)
        return [event.body["only"]]


class Scale(sg.Model):
    """Returns its array times ``body["by"]``, with the array's own sum, so each answer is checkable."""

    def predict(self, body):
        return {"y": body["x"] * body["by"], "sum": float(body["x"].sum()), "by": body["by"]}


class Unsendable(sg.Model):
    """Returns a set (which no codec carries) when asked to, else its body."""

    def predict(self, body):
        return {"tags": {"a", "b"}} if body.get("unsendable") else body


class UnsendableStream(sg.Model):
    """Streams a good chunk, then a set (which no codec carries)."""

    def predict(self, body):
        yield {"i": 0}
        yield {"tags": {"a", "b"}}


class Batched(sg.Model):
    """Dynamic batching: answers each body with its own ``x``, the size of the batch it ran in and the
    process it ran in; fails the whole batch when any body asks to (``fail``)."""

    def predict_batch(self, bodies):
        time.sleep(float(self.get_param("batch_seconds", 0.0)))
        if any(isinstance(body, dict) and body.get("fail") for body in bodies):
            raise ValueError(f"batch of {len(bodies)} refused")
        return [{"x": body["x"], "batch": len(bodies), "pid": os.getpid()} for body in bodies]


class BatchedTensors(sg.Model):
    """Dynamic batching on V2 inputs: each call's first input doubled, with the batch size seen."""

    def predict_batch(self, bodies):
        return [{"doubled": body["inputs"][0] * 2, "batch": np.array([len(bodies)])} for body in bodies]


class Sleepy(sg.Model):
    """A sync model that takes ``seconds`` (a body field) to answer."""

    def predict(self, body):
        time.sleep(body.get("seconds", 0.5))
        return {"slept": body.get("seconds", 0.5), "n": body.get("n")}
