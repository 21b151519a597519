"""Running `servegraph serve` (or `servegraph worker`) in a child process: for demos, tests and benchmarks.

    with launch("examples.demo:graph") as router:
        Client(router.address).invoke(...)

    with launch_worker("mypkg.graphs:graph", "--model", "big") as worker:
        with launch("mypkg.graphs:graph", "--remote", f"big={worker.address}") as router: ...

The child is its own process group; leaving the block sends SIGTERM (the router, or the worker, drains
and stops) and kills the group only if it lingers, so nothing outlives the block.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

READY_LINE = re.compile(r"serving graph '.*' on (\S+):(\d+)")
WORKER_READY_LINE = re.compile(r"serving worker '.*' on (\S+):(\d+)")


@dataclass
class LaunchedRouter:
    """A launched `serve` (or `worker`): its process, the address it serves, what it has printed so far."""

    process: subprocess.Popen[str]
    address: str = ""
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output)

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


@contextlib.contextmanager
def launch(
    target: str,
    *args: str,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    echo: bool = False,
    prefix: Sequence[str] = (),
) -> Iterator[LaunchedRouter]:
    """Serve ``MODULE:ATTR`` on a free port until the block ends; yields once the graph is loaded.

    `echo` copies the router's output (its log, its workers' output) to this process's stderr;
    `prefix` runs the command under another (``ip netns exec NAME``)."""
    command = [*prefix, sys.executable, "-m", "servegraph.cli", "serve", target, "--port", "0", *args]
    with _launched(command, READY_LINE, cwd, env, timeout, echo) as router:
        yield router


@contextlib.contextmanager
def launch_worker(
    target: str,
    *args: str,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    echo: bool = False,
    prefix: Sequence[str] = (),
) -> Iterator[LaunchedRouter]:
    """`servegraph worker MODULE:ATTR ARGS` (``--port 0`` unless `args` name one) until the block ends;
    yields once its models have loaded."""
    port = () if "--port" in args else ("--port", "0")
    command = [*prefix, sys.executable, "-m", "servegraph.cli", "worker", target, *port, *args]
    with _launched(command, WORKER_READY_LINE, cwd, env, timeout, echo) as worker:
        yield worker


@contextlib.contextmanager
def _launched(
    command: list[str],
    ready_line: re.Pattern[str],
    cwd: str | Path | None,
    env: Mapping[str, str] | None,
    timeout: float,
    echo: bool,
) -> Iterator[LaunchedRouter]:
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    launched = LaunchedRouter(process)
    ready = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            launched.output.append(line)
            if echo:
                sys.stderr.write(line)
            if not ready.is_set() and (match := ready_line.search(line)):
                launched.address = f"{match[1]}:{match[2]}"
                ready.set()
        ready.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or not launched.address:
            raise RuntimeError(f"{' '.join(command[-6:])} did not start:\n{launched.log()}")
        yield launched
    finally:
        stop(process)
        reader.join(timeout=5)


def stop(process: subprocess.Popen[str], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL to the whole process group if it lingers; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode
