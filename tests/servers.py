"""Starting real servers for tests: `servegraph serve` in its own process, always stopped after."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
READY_LINE = re.compile(r"serving graph '.*' on (\S+):(\d+)")


@dataclass
class ServedGraph:
    process: subprocess.Popen[str]
    address: str
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output)


@contextlib.contextmanager
def serve(target: str, *args: str, timeout: float = 30.0) -> Iterator[ServedGraph]:
    """Run ``servegraph serve TARGET --port 0`` from the tests folder until the block ends.

    Yields once the router printed its port (the graph is loaded by then); on exit sends SIGTERM and
    waits, killing the process group only if it does not stop in time.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "servegraph.cli", "serve", target, "--port", "0", *args],
        cwd=TESTS_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    served = ServedGraph(process, "")
    ready = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            served.output.append(line)
            if not ready.is_set() and (match := READY_LINE.search(line)):
                served.address = f"{match[1]}:{match[2]}"
                ready.set()
        ready.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or not served.address:
            raise RuntimeError(f"router for {target} did not start:\n{served.log()}")
        yield served
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
