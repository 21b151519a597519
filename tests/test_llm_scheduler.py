"""The scheduler on a fake backend: joining, leaving, FIFO, stop strings, UTF-8, cancel, errors, async."""

from __future__ import annotations

import asyncio
import time

import numpy
import pytest

from servegraph.errors import InvalidArgument, ServingError
from servegraph.models.llm.scheduler import SamplingParams, Scheduler, sample

VOCAB = 64
EOS = 0


class FakeBackend:
    """Next token = a deterministic function of the slot's whole sequence (so a slot mix-up shows).

    Token t (1..63) is the byte ``chr(ord('a') + t % 26)`` except a few multi-byte pieces.
    """

    max_step_tokens = 64
    n_ctx = 128
    eos_ids = frozenset({EOS})

    def __init__(self, max_batch_size: int = 2, delay: float = 0.0, eos_at_length: int | None = None):
        self.max_batch_size = max_batch_size
        self.sequences: dict[int, list[int]] = {}
        self.steps: list[list[tuple[int, int]]] = []  # per step: (slot, tokens fed)
        self.delay = delay
        self.eos_at_length = eos_at_length
        self.fail_next = False

    def encode_chat(self, messages):
        return [1 + (ord(c) % 60) for c in messages[-1]["content"]]

    def forward(self, work):
        time.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device on fire")
        self.steps.append([(slot, len(tokens)) for slot, tokens in work])
        logits = numpy.zeros((len(work), VOCAB), numpy.float32)
        for row, (slot, tokens) in enumerate(work):
            sequence = self.sequences.setdefault(slot, [])
            sequence.extend(tokens)
            eos = self.eos_at_length is not None and len(sequence) >= self.eos_at_length
            nxt = EOS if eos else 1 + sum(sequence) % (VOCAB - 1)
            logits[row, nxt] = 1.0
        return logits

    def truncate(self, slot, length):
        del self.sequences.setdefault(slot, [])[length:]
        return len(self.sequences[slot])

    def close(self):
        pass

    def token_bytes(self, token):
        if token == 7:
            return "é".encode()[:1]  # half a character ...
        if token == 8:
            return "é".encode()[1:]  # ... and the rest
        return bytes([ord("a") + token % 26])


def make(**kwargs) -> tuple[FakeBackend, Scheduler]:
    backend = FakeBackend(**kwargs)
    return backend, Scheduler(backend, seed=0)


def alone(prompt: list[int], max_tokens: int) -> str:
    _, scheduler = make()
    try:
        return "".join(scheduler.submit(prompt, SamplingParams(max_tokens=max_tokens)))
    finally:
        scheduler.close()


def test_joining_and_leaving_keeps_each_output_as_alone():
    backend, scheduler = make(max_batch_size=3, delay=0.002)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10], [11, 12]]
    lengths = [20, 5, 12, 9, 15]
    try:
        requests = []
        for prompt, n in zip(prompts, lengths, strict=True):
            requests.append(scheduler.submit(prompt, SamplingParams(max_tokens=n)))
            time.sleep(0.006)  # arrive while others are decoding
        texts = ["".join(r) for r in requests]
    finally:
        scheduler.close()
    assert texts == [alone(p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert [r.usage["completion_tokens"] for r in requests] == lengths
    assert [r.finish_reason for r in requests] == ["length"] * 5
    assert max(len(step) for step in backend.steps) == 3  # never above max_batch_size
    # a request joined a running batch: some step mixed a prefill with decodes
    assert any(any(n > 1 for _, n in step) and any(n == 1 for _, n in step) for step in backend.steps)


def test_a_new_request_reuses_the_longest_cached_prefix_of_a_free_slot():
    backend, scheduler = make(max_batch_size=2)
    shared = [5, 6, 7, 8, 9]
    try:
        "".join(scheduler.submit([*shared, 10], SamplingParams(max_tokens=4)))  # slot 0 (both empty)
        "".join(scheduler.submit([40, 41], SamplingParams(max_tokens=4)))  # slot 1: no prefix, holds least
        other = scheduler.submit([50, 51, 52], SamplingParams(max_tokens=30))  # slot 1 again, stays busy
        first = iter(other)
        next(first)
        reuse = scheduler.submit([*shared, 11, 12], SamplingParams(max_tokens=6))  # slot 0: 5 tokens cached
        text = "".join(reuse)
        "".join(first)
        before = len(backend.steps)
        again = scheduler.submit([*shared, 11, 12], SamplingParams(max_tokens=6))  # whole prompt cached
        text_again = "".join(again)
    finally:
        scheduler.close()
    assert (other._slot, reuse._slot, again._slot) == (1, 0, 0)
    assert (0, 2) in [entry for step in backend.steps for entry in step]  # only [11, 12] was prefilled
    assert all(n == 1 for step in backend.steps[before:] for _, n in step)  # only the last prompt token
    assert text == text_again == alone([*shared, 11, 12], 6)
    assert reuse.usage["prompt_tokens"] == again.usage["prompt_tokens"] == 7  # usage counts the whole prompt


def test_waiting_requests_are_served_in_fifo_order():
    backend, scheduler = make(max_batch_size=1)
    try:
        requests = [scheduler.submit([i + 1], SamplingParams(max_tokens=2)) for i in range(4)]
        for r in requests:
            list(r)
    finally:
        scheduler.close()
    prefills = [n for step in backend.steps for _, n in step]
    assert prefills == [1, 1] * 4


def test_eos_stops_and_is_not_counted():
    _, scheduler = make(eos_at_length=5)
    try:
        request = scheduler.submit([1, 2], SamplingParams(max_tokens=50))
        text = "".join(request)
    finally:
        scheduler.close()
    assert request.finish_reason == "stop" and request.completion_tokens == 3 and len(text) == 3
    assert request.usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_stop_string_is_not_emitted_and_ends_the_request():
    full = alone([3, 4], 40)
    stop = full[10:13]
    first = full.find(stop)
    _, scheduler = make()
    try:
        request = scheduler.submit([3, 4], SamplingParams(max_tokens=40, stop=(stop, "never-there")))
        chunks = list(request)
    finally:
        scheduler.close()
    assert "".join(chunks) == full[:first] == request.text
    assert request.finish_reason == "stop"
    assert request.completion_tokens == first + len(stop)  # one byte per token here


def test_incomplete_utf8_is_held_back():
    class Utf8(FakeBackend):
        def forward(self, work):
            logits = numpy.zeros((len(work), VOCAB), numpy.float32)
            logits[:, 7 if self.flip else 8] = 1
            self.flip = not self.flip
            return logits

    backend = Utf8()
    backend.flip = True
    scheduler = Scheduler(backend)
    try:
        chunks = list(scheduler.submit([1], SamplingParams(max_tokens=4)))
        cut = list(scheduler.submit([1], SamplingParams(max_tokens=3)))
    finally:
        scheduler.close()
    assert chunks == ["é", "é"]  # never a half character
    assert "".join(cut) == "é\ufffd"  # a character cut by max_tokens ends as a replacement char


def test_cancel_frees_the_slot_within_a_step_and_others_finish():
    backend, scheduler = make(max_batch_size=2, delay=0.003)
    try:
        keep = scheduler.submit([5, 6], SamplingParams(max_tokens=30))
        drop = scheduler.submit([7, 8], SamplingParams(max_tokens=1000))
        stream = iter(drop)
        next(stream)
        next(stream)
        steps_before = len(backend.steps)
        stream.close()  # closing the iterator cancels
        deadline = time.time() + 2
        while drop.finish_reason is None and time.time() < deadline:
            time.sleep(0.001)
        freed_at = len(backend.steps)
        text = "".join(keep)
    finally:
        scheduler.close()
    assert drop.finish_reason == "cancelled" and freed_at - steps_before <= 2
    assert drop.completion_tokens <= 2 + 2
    assert text == alone([5, 6], 30)


def test_backend_error_fails_that_step_and_the_thread_lives():
    backend, scheduler = make()
    try:
        backend.fail_next = True
        failed = scheduler.submit([1], SamplingParams(max_tokens=3))
        with pytest.raises(ServingError, match="device on fire"):
            list(failed)
        assert failed.finish_reason == "error"
        assert "".join(scheduler.submit([1], SamplingParams(max_tokens=3))) == alone([1], 3)
    finally:
        scheduler.close()


def test_async_iteration_does_not_block_the_loop_and_cancels_on_task_cancel():
    _, scheduler = make(max_batch_size=2, delay=0.005)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick = asyncio.create_task(ticker())
        request = scheduler.submit([2, 3], SamplingParams(max_tokens=20))
        text = "".join([chunk async for chunk in request])
        endless = scheduler.submit([4], SamplingParams(max_tokens=1000))

        async def consume():
            async for _ in endless:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        tick.cancel()
        return text, ticks, endless

    try:
        text, ticks, endless = asyncio.run(main())
        deadline = time.time() + 2
        while endless.finish_reason is None and time.time() < deadline:
            time.sleep(0.001)
    finally:
        scheduler.close()
    assert text == alone([2, 3], 20)
    assert ticks > 20  # the loop kept running while tokens were generated
    assert endless.finish_reason == "cancelled" and endless.completion_tokens < 100


def test_sampling_is_seeded_per_request_and_respects_top_p():
    logits = numpy.log(numpy.array([0.5, 0.3, 0.15, 0.05], numpy.float32))
    draws = [sample(logits, 1.0, 0.7, numpy.random.default_rng(1)) for _ in range(3)]
    assert draws == [sample(logits, 1.0, 0.7, numpy.random.default_rng(1))] * 3
    rng = numpy.random.default_rng(0)
    seen = {sample(logits, 1.0, 0.7, rng) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 + 0.3 covers top_p 0.7; 2 and 3 are cut
    assert sample(logits, 0.0, 1.0, rng) == 0
    _, scheduler = make()
    try:
        a = "".join(scheduler.submit([9], SamplingParams(max_tokens=10, temperature=1.0, seed=5)))
        b = "".join(scheduler.submit([9], SamplingParams(max_tokens=10, temperature=1.0, seed=5)))
    finally:
        scheduler.close()
    assert a == b


def test_bad_input_is_invalid_argument():
    _, scheduler = make()
    try:
        with pytest.raises(InvalidArgument):
            scheduler.submit([], SamplingParams())
        with pytest.raises(InvalidArgument):
            scheduler.submit([1] * FakeBackend.n_ctx, SamplingParams())
        with pytest.raises(InvalidArgument):
            SamplingParams.from_config({"max_tokens": "many"})
        assert SamplingParams.from_config({"stop": "x"}).stop == ("x",)
    finally:
        scheduler.close()


def test_close_cancels_what_is_left():
    _, scheduler = make(max_batch_size=1, delay=0.002)
    running = scheduler.submit([1], SamplingParams(max_tokens=10_000))
    waiting = scheduler.submit([2], SamplingParams(max_tokens=5))
    time.sleep(0.02)
    scheduler.close()
    assert running.finish_reason == waiting.finish_reason == "cancelled"
    assert not scheduler._thread.is_alive()
