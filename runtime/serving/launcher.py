"""Running `servegraph serve` in a child process: for demos, tests and benchmarks.

    with launch("examples.demo:graph") as router:
        Client(router.address).invoke(...)

The child is its own process group; leaving the block sends SIGTERM (the router drains and stops its
workers) and kills the group only if it lingers, so nothing outlives the block.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

READY_LINE = re.compile(r"serving graph '.*' on (\S+):(\d+)")


@dataclass
class LaunchedRouter:
    process: subprocess.Popen[str]
    address: str = ""
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output)


@contextlib.contextmanager
def launch(
    target: str,
    *args: str,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    echo: bool = False,
) -> Iterator[LaunchedRouter]:
    """Serve ``MODULE:ATTR`` on a free port until the block ends; yields once the graph is loaded.

    `echo` copies the router's output (its log, its workers' output) to this process's stderr.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "servegraph.cli", "serve", target, "--port", "0", *args],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    router = LaunchedRouter(process)
    ready = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            router.output.append(line)
            if echo:
                sys.stderr.write(line)
            if not ready.is_set() and (match := READY_LINE.search(line)):
                router.address = f"{match[1]}:{match[2]}"
                ready.set()
        ready.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or not router.address:
            raise RuntimeError(f"router for {target} did not start:\n{router.log()}")
        yield router
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
