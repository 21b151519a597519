"""Continuous (in-flight) batching for local LLMs, generic over a backend.

One background thread runs decode steps while there is work and sleeps when there is none. Each
step gathers, for every running sequence, the tokens its backend has not seen yet (the prompt for a
sequence that just joined, the last sampled token otherwise), runs ONE batched forward, and samples
one token per sequence from the returned logits. Requests join at the next step and leave the
moment they finish or are cancelled, so a long answer never holds a short one hostage.

A slot keeps its KV cache after its request leaves: a new request takes the free slot sharing the
longest prefix with its prompt and only prefills the rest. Chat prompts share a lot (the template's
system prompt: 31 of SmolLM2's ~40 prompt tokens), and llama.cpp's own `Llama` reuses its previous
prompt the same way, so without this every request would pay its whole prefill again.

Sampling lives here, on numpy logits, so every backend (llama.cpp, transformers) decodes the same
way; a backend only turns token ids into next-token logits and keeps each slot's KV cache.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy

from ...errors import InvalidArgument, ServingError, Unavailable

logger = logging.getLogger("servegraph.llm")

DEFAULT_MAX_TOKENS = 256


class Backend(Protocol):
    """A model that keeps one KV-cache sequence per slot and scores tokens for many slots at once.

    `forward` and `truncate` are only ever called from the scheduler's thread; `encode_chat` may be
    called from any thread (it only tokenizes).
    """

    max_batch_size: int  # slots are 0 .. max_batch_size-1
    max_step_tokens: int  # most tokens one forward may take (prefill and decode together)
    n_ctx: int  # most tokens (prompt + completion) one sequence may hold
    eos_ids: frozenset[int]

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids: the model's chat template applied, generation prompt added."""
        ...

    def forward(self, work: list[tuple[int, list[int]]]) -> numpy.ndarray:
        """Append each ``(slot, tokens)`` to that slot's sequence; float32 logits (len(work), vocab)
        of each entry's last token. Entries mix prefills (many tokens) and decodes (one token)."""
        ...

    def truncate(self, slot: int, length: int) -> int:
        """Keep the first `length` tokens of the slot's sequence, forget the rest; the length kept
        (0 where the backend cannot cut a sequence short). The next forward continues from there."""
        ...

    def token_bytes(self, token: int) -> bytes:
        """The UTF-8 bytes a token adds to the text (b"" for special tokens); may be part of a character."""
        ...

    def close(self) -> None:
        """Release the model's memory now (native buffers, KV cache) instead of at garbage collection."""
        ...


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings; ``temperature <= 0`` is greedy (argmax)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SamplingParams:
        """From an invocation config (max_tokens, temperature, top_p, stop as a str or a list, seed)."""
        stop = config.get("stop") or ()
        try:
            params = cls(
                max_tokens=int(config.get("max_tokens", DEFAULT_MAX_TOKENS)),
                temperature=float(config.get("temperature", 0.0)),
                top_p=float(config.get("top_p", 1.0)),
                stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop if s),
                seed=None if config.get("seed") is None else int(config["seed"]),
            )
        except (TypeError, ValueError) as error:
            raise InvalidArgument(f"bad generation parameter: {error}") from error
        if params.max_tokens < 1 or not 0.0 < params.top_p <= 1.0:
            raise InvalidArgument("max_tokens must be >= 1 and top_p in (0, 1]")
        return params


class Request:
    """One generation: iterate it (sync or async) for text deltas; ``usage`` and ``text`` when done.

    Written by the scheduler thread, read by one consumer; `_lock` guards the hand-over.
    """

    def __init__(self, prompt: list[int], params: SamplingParams, scheduler: Scheduler):
        self.prompt = prompt
        self.params = params
        self.completion_tokens = 0
        self.finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
        self._scheduler = scheduler
        self._rng = numpy.random.default_rng(params.seed) if params.seed is not None else None
        # scheduler-side state
        self._slot: int | None = None
        self._pending: list[int] = prompt  # tokens the backend has not seen yet
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""  # everything decoded so far (may run past a stop string)
        self._emitted = 0  # how much of _text has been handed to the consumer
        self._cancelled = False
        # hand-over to the consumer
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._chunks: collections.deque[str] = collections.deque()
        self._error: BaseException | None = None
        self._wake: Callable[[], None] | None = None

    @property
    def text(self) -> str:
        """The answer so far (the whole answer once finished)."""
        return self._text[: self._emitted]

    @property
    def usage(self) -> dict[str, int]:
        prompt = len(self.prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
        }

    def cancel(self) -> None:
        """Stop generating: the slot is freed before the scheduler's next step."""
        if self.finish_reason is None:
            self._cancelled = True
            self._scheduler._wake_up()

    # -- consumer side -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        """Text deltas as they are generated; closing the iterator early cancels the request."""
        finished = False
        try:
            while True:
                with self._ready:
                    while not self._chunks and self.finish_reason is None:
                        self._ready.wait()
                    chunks, done = self._take()
                yield from chunks
                if done:
                    finished = True
                    self._raise_error()
                    return
        finally:
            if not finished:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        """Text deltas without ever blocking the event loop: the scheduler wakes it per token."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under a cancelled consumer
                loop.call_soon_threadsafe(event.set)

        finished = False
        with self._lock:
            self._wake = wake
        try:
            while True:
                event.clear()
                with self._lock:
                    chunks, done = self._take()
                for chunk in chunks:
                    yield chunk
                if done:
                    finished = True
                    self._raise_error()
                    return
                await event.wait()
        finally:
            with self._lock:
                self._wake = None
            if not finished:
                self.cancel()

    def _take(self) -> tuple[list[str], bool]:
        chunks = list(self._chunks)
        self._chunks.clear()
        return chunks, self.finish_reason is not None

    def _raise_error(self) -> None:
        if self._error is not None:
            if isinstance(self._error, ServingError):
                raise self._error
            raise ServingError(f"LLM generation failed: {self._error}") from self._error

    # -- scheduler side ----------------------------------------------------------------------------
    def _publish(self, delta: str, finish_reason: str | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if delta:
                self._chunks.append(delta)
            if finish_reason is not None:
                self._error = error
                self.finish_reason = finish_reason
            self._ready.notify_all()
            wake = self._wake
        if wake is not None:
            wake()

    def _accept(self, token: int, token_bytes: bytes, final: bool) -> bool:
        """Add a sampled (non-EOS) token; publish the text that is safe to show; True at a stop string.

        Text ending in an incomplete UTF-8 character, or in what may be the start of a stop string,
        is held back until the next token settles it.
        """
        self.completion_tokens += 1
        self._text += self._decoder.decode(token_bytes, final=final)
        hits = [i for i in (self._text.find(s, self._emitted) for s in self.params.stop) if i >= 0]
        if hits:  # held-back text never holds a whole stop string, so one can only start here
            self._text = self._text[: min(hits)]
            self._decoder.reset()
            return True
        safe = len(self._text)
        if not final:
            safe -= _partial_stop(self._text, self.params.stop)
        if safe > self._emitted:
            delta, self._emitted = self._text[self._emitted : safe], safe
            self._publish(delta)
        return False

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if reason == "cancelled":
            logger.info("generation stopped by the caller after %d tokens", self.completion_tokens)
        if reason != "error":
            self._text += self._decoder.decode(b"", final=True)  # a character that never completed
        delta = self._text[self._emitted :] if reason != "error" else ""
        self._emitted += len(delta)
        self._publish(delta, reason, error)


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class Scheduler:
    """Runs many requests through one backend with iteration-level (continuous) batching.

    Up to ``backend.max_batch_size`` sequences run at once; later requests wait in FIFO order and
    join as slots free. A backend error fails only the requests in that step, with the cause.
    """

    def __init__(self, backend: Backend, seed: int | None = None):
        self.backend = backend
        self._rng = numpy.random.default_rng(seed)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: dict[int, Request] = {}
        self._free_slots = set(range(backend.max_batch_size))
        self._cached: list[list[int]] = [[] for _ in range(backend.max_batch_size)]  # each slot's KV tokens
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llm-scheduler", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams) -> Request:
        """Queue a request (thread-safe); it joins the running batch at the next step."""
        if not prompt:
            raise InvalidArgument("the prompt is empty")
        if len(prompt) >= self.backend.n_ctx:
            raise InvalidArgument(
                f"the prompt has {len(prompt)} tokens; the model's context holds {self.backend.n_ctx}"
            )
        request = Request(prompt, params, self)
        with self._cond:
            if self._closed:
                raise Unavailable("the LLM scheduler is closed")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def close(self) -> None:
        """Stop the thread after the current step; unfinished requests end as cancelled."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _wake_up(self) -> None:
        with self._cond:
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._running or self._closed):
                    self._cond.wait()
                if self._closed:
                    for request in [*self._running.values(), *self._waiting]:
                        request._finish("cancelled")
                    return
                self._drop_cancelled()
                work = self._plan()
            if work:
                self._step(work)

    def _drop_cancelled(self) -> None:
        for slot, request in list(self._running.items()):
            if request._cancelled:
                self._release(slot)
                request._finish("cancelled")
        for request in [r for r in self._waiting if r._cancelled]:
            self._waiting.remove(request)
            request._finish("cancelled")

    def _plan(self) -> list[tuple[Request, list[int]]]:
        """This step's work: every running sequence, then waiting requests while slots and the
        backend's token budget allow (FIFO: the head waits rather than being overtaken)."""
        work = [(request, request._pending) for _, request in sorted(self._running.items())]  # slot order
        budget = self.backend.max_step_tokens - sum(len(tokens) for _, tokens in work)
        while self._waiting and self._free_slots and len(self._waiting[0].prompt) <= budget:
            request = self._waiting.popleft()
            self._seat(request)
            budget -= len(request._pending)
            work.append((request, request._pending))
        return work

    def _seat(self, request: Request) -> None:
        """Give the request the free slot whose cache shares the longest prefix with its prompt
        (else the one holding least), and keep that prefix: only the rest needs a prefill."""
        prompt = request.prompt

        def shared(slot: int) -> int:
            return _common_prefix(self._cached[slot], prompt)

        slot = max(sorted(self._free_slots), key=lambda s: (shared(s), -len(self._cached[s])))
        self._free_slots.remove(slot)
        kept = self.backend.truncate(slot, min(shared(slot), len(prompt) - 1))  # feed >= 1 token for logits
        del self._cached[slot][kept:]
        request._slot, request._pending = slot, prompt[kept:]
        self._running[slot] = request

    def _step(self, work: list[tuple[Request, list[int]]]) -> None:
        try:
            logits = self.backend.forward([(request._slot, tokens) for request, tokens in work])  # type: ignore[misc]
        except Exception as error:
            logger.exception("LLM forward failed for %d sequences", len(work))
            with self._cond:
                for request, _ in work:
                    self._release(request._slot, keep_cache=False)  # type: ignore[arg-type]
                    request._finish("error", error)
            return
        for request, tokens in work:
            self._cached[request._slot].extend(tokens)  # type: ignore[index]
        for (request, tokens), row in zip(work, logits, strict=True):
            reason = self._advance(request, len(tokens), row)
            if reason is not None:
                with self._cond:
                    self._release(request._slot)  # type: ignore[arg-type]
                request._finish(reason)

    def _advance(self, request: Request, fed: int, logits: numpy.ndarray) -> str | None:
        """Sample the request's next token; its finish reason if this ends it."""
        if request._cancelled:
            return "cancelled"
        params = request.params
        token = sample(logits, params.temperature, params.top_p, request._rng or self._rng)
        request._pending = [token]
        if token in self.backend.eos_ids:
            return "stop"
        length = len(request.prompt) + request.completion_tokens + 1
        final = request.completion_tokens + 1 >= params.max_tokens or length >= self.backend.n_ctx
        if request._accept(token, self.backend.token_bytes(token), final):
            return "stop"
        return "length" if final else None

    def _release(self, slot: int, keep_cache: bool = True) -> None:
        """Free a slot for the next request (caller holds `_cond`). Its cache stays for prefix reuse
        unless a failed forward may have left it half-written."""
        self._running.pop(slot, None)
        if not keep_cache:
            self.backend.truncate(slot, 0)
            self._cached[slot].clear()
        self._free_slots.add(slot)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def sample(logits: numpy.ndarray, temperature: float, top_p: float, rng: numpy.random.Generator) -> int:
    """Greedy when temperature <= 0, else softmax(logits / temperature) cut to the top_p nucleus."""
    if temperature <= 0:
        return int(numpy.argmax(logits))
    scaled = logits.astype(numpy.float64) / temperature
    probs = numpy.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = numpy.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        keep = numpy.cumsum(sorted_probs) - sorted_probs < top_p
        order, sorted_probs = order[keep], sorted_probs[keep]
        return int(order[rng.choice(len(order), p=sorted_probs / sorted_probs.sum())])
    return int(rng.choice(len(probs), p=probs))
