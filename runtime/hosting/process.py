"""One worker process as the router sees it: started, watched, restarted, stopped.

The router spawns ``python -m servegraph.workers.worker`` (a fresh interpreter: never a fork of a
process that has imported gRPC), hands it its models' declarations (and their proxies' artifacts)
as one line on stdin, relays its output to the log prefixed with its name, and talks to it over a
Unix socket in a private directory. If the process dies, calls in flight fail with UNAVAILABLE, and
it is started again with backoff; calls that arrive meanwhile wait for it (bounded).

Stopping is the router's alone: a worker ignores SIGTERM and SIGINT (a signal to the whole process
group must not cut the calls the router is draining) and stops when the router closes its stdin,
or is killed if it has not within the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import grpc

from ..errors import GraphError, Unavailable
from ..models.placement import Placement, declarations
from ..v1 import worker_pb2_grpc
from .calls import HUNG_GRACE
from .link import MESSAGE_OPTIONS, WorkerLink

logger = logging.getLogger("servegraph.worker")

START_TIMEOUT = float(os.environ.get("SERVEGRAPH_WORKER_START_TIMEOUT", "300"))
"""Seconds a worker may take to load its models (LLMs load slowly on CPU)."""

BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)

READY_LINE = re.compile(r"^serving worker '.*' on \S+$")
"""What a worker prints once every model has loaded and it listens (the standalone worker's contract)."""


class WorkerProcess(WorkerLink):
    def __init__(self, name: str, models: dict[str, Placement], socket_dir: Path, *, device: str | None = None):
        super().__init__(name)
        self.models = models
        self.socket = str(socket_dir / f"{name}.sock")
        self.device = device
        self._process: _Child | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Start the process and wait until its models have loaded; GraphError if they cannot."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop supervising, then ask the process to stop and kill it if it has not within `grace`.

        Bounded whatever the supervisor is doing: it restarts nothing once stopping has begun, and the
        process it may just have started is this stop's to end."""
        self._stopping = True
        self.ready.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor], timeout=grace)
        await self._terminate(grace)

    async def wait_ready(self, timeout: float) -> worker_pb2_grpc.WorkerStub:
        """The stub of a live worker; UNAVAILABLE if it does not come back within `timeout`."""
        if self.is_down():
            self.ready.clear()  # died a moment ago: wait for the supervisor's restart rather than fail
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                raise Unavailable(f"worker '{self.name}' is restarting and not ready yet") from None
        assert self.stub is not None
        return self.stub

    def is_down(self) -> bool:
        return super().is_down() or (self._process is not None and self._process.exited())

    def lost(self) -> str:
        return f"its worker '{self.name}' (pid {self.pid}) stopped during the call and is being restarted"

    # -- internals ----------------------------------------------------------------------------------
    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self._process = _Child(
            [
                *(sys.executable, "-m", "servegraph.workers.worker", "--name", self.name),
                *("--socket", self.socket, "--parent", str(os.getpid())),
            ],
            worker_environment(self.device),
        )
        specs = json.dumps(declarations(self.models)).encode()
        with contextlib.suppress(BrokenPipeError):  # it died at once: its output tells why
            await self._process.send(specs)
        lines: list[str] = []
        if not await self._read_until_ready(lines):
            code = await self._process.wait()
            detail = "".join(lines[-20:])
            raise GraphError(f"worker '{self.name}' exited with code {code} while loading its models:\n{detail}")
        self._relay = asyncio.create_task(self._relay_output(), name=f"output-{self.name}")
        self._open(grpc.aio.insecure_channel(f"unix:{self.socket}", options=MESSAGE_OPTIONS), self._restart_hung)
        logger.info("worker '%s' ready (pid %s, models: %s)", self.name, self.pid, ", ".join(self.models))

    async def _read_until_ready(self, lines: list[str]) -> bool:
        assert self._process is not None and self._process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while line := await self._process.stdout.readline():
                    text = line.decode(errors="replace")
                    if READY_LINE.match(text.rstrip()):
                        return True
                    lines.append(text)
                    logger.info("[%s] %s", self.name, text.rstrip())
        except TimeoutError:
            self._process.kill()
            lines.append(f"(no ready signal within {START_TIMEOUT:.0f}s)\n")
        return False

    async def _relay_output(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        while line := await process.stdout.readline():
            logger.info("[%s] %s", self.name, line.decode(errors="replace").rstrip())

    async def _supervise(self) -> None:
        """Restart the worker whenever it dies, with growing pauses while it keeps dying; never once the
        router is stopping (a signal to the process group stops workers and router alike)."""
        failures = 0
        while True:
            assert self._process is not None
            code = await self._process.wait()
            self.ready.clear()
            self.up = False
            if self._stopping:
                return
            await self._close_channel()
            logger.warning("worker '%s' (pid %s) exited with code %s; restarting", self.name, self._process.pid, code)
            while True:
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                if self._stopping:
                    return
                try:
                    await self._spawn()
                    break
                except Exception as error:  # keep supervising whatever went wrong
                    failures += 1
                    logger.error("restarting worker '%s' failed: %s", self.name, error)
            self.restarts += 1
            failures = 0

    def _restart_hung(self) -> None:
        """A predict outlived its model's timeout by `HUNG_GRACE`: kill the worker, which the supervisor restarts."""
        if self._stopping or self.is_down():
            return
        assert self._process is not None
        logger.warning(
            "worker '%s' (pid %s) has not answered a call %.1fs past its model's timeout; killing it",
            *(self.name, self.pid, HUNG_GRACE),
        )
        self.ready.clear()
        self._process.kill()

    async def _terminate(self, grace: float) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.ask_to_stop()
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        await self._close_channel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)


class _Child:
    """A worker process started with `subprocess.Popen` and watched from the event loop without threads.

    Not ``asyncio.create_subprocess_exec``: on uvloop that fork()s the router, whose gRPC threads
    make the forked child crash now and then (SIGSEGV before exec, seen here about once in ten
    restarts); Popen spawns with vfork/posix_spawn and runs no fork handlers. Its output goes to
    `stdout` (a StreamReader); a pidfd tells when it exits.
    """

    def __init__(self, args: list[str], env: dict[str, str]):
        self.popen = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        self.pid = self.popen.pid
        self.stdout = asyncio.StreamReader(limit=1 << 20)
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        assert self.popen.stdout is not None
        self._out = self.popen.stdout.fileno()
        os.set_blocking(self._out, False)
        self._loop.add_reader(self._out, self._read)
        self._poll = select.poll()
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._reap)
            self._poll.register(self._pidfd, select.POLLIN)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): a thread waits
            self._pidfd = None
            waiting = self._loop.run_in_executor(None, self.popen.wait)
            waiting.add_done_callback(lambda _: self._reap())

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def send(self, line: bytes) -> None:
        """Write `line` and a newline to its stdin, which stays open; BrokenPipeError if it has died already."""
        if len(line) < select.PIPE_BUF:  # fits in an empty pipe: the write cannot block
            self._send(line)
        else:
            await asyncio.to_thread(self._send, line)

    def _send(self, line: bytes) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + b"\n")
        self.popen.stdin.flush()

    def ask_to_stop(self) -> None:
        """Close its stdin: the worker's cue to stop serving and exit."""
        assert self.popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it has died already
            self.popen.stdin.close()

    def exited(self) -> bool:
        """Whether it has exited, even if the event loop has not run `_reap` yet (one poll(2) call).

        On the event loop only (a poll object refuses two callers at once)."""
        if self._exited.done():
            return True
        return self._pidfd is not None and bool(self._poll.poll(0))

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        self.popen.kill()

    def _read(self) -> None:
        try:
            data = os.read(self._out, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.stdout.feed_data(data)
            return
        self._loop.remove_reader(self._out)
        self.stdout.feed_eof()
        assert self.popen.stdout is not None
        self.popen.stdout.close()

    def _reap(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            self._poll.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        code = self.popen.wait()
        self.ask_to_stop()  # frees the pipe
        if not self._exited.done():
            self._exited.set_result(code)


def worker_environment(device: str | None = None) -> dict[str, str]:
    """A worker's environment: this process's, its import path (so user modules import), one BLAS thread
    by default (workers share the machine's cores), and with `device` the one GPU it may see."""
    env = dict(os.environ)
    paths = [os.getcwd() if entry == "" else entry for entry in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")  # a model's print() reaches the log when printed, not at exit
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(variable, "1")
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = _visible_device(device)
    return env


def _visible_device(device: str) -> str:
    """ "cuda:1" → "1"; "cpu" → "" (no GPU visible)."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return index or "0"
    return ""
