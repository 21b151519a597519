"""Starting real servers for tests: `servegraph serve` (or `worker`) in its own process, always stopped after."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from servegraph.serving.launcher import LaunchedRouter, launch, launch_worker, stop

TESTS_DIR = Path(__file__).resolve().parent

__all__ = ["TESTS_DIR", "alive", "kill_all", "serve", "stop", "wait_gone", "worker"]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    paths = os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": paths, **(extra or {})}


@contextlib.contextmanager
def serve(
    target: str, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> Iterator[LaunchedRouter]:
    """Serve ``TARGET`` (a module of the tests folder) on a free port until the block ends."""
    with launch(target, *args, cwd=TESTS_DIR, env=_env(env), timeout=timeout, prefix=prefix) as router:
        yield router


@contextlib.contextmanager
def worker(target: str, *args: str, timeout: float = 60.0, prefix: tuple[str, ...] = ()) -> Iterator[LaunchedRouter]:
    """`servegraph worker TARGET ARGS` (on a free port unless `args` name one) until the block ends."""
    with launch_worker(target, *args, cwd=TESTS_DIR, env=_env(None), timeout=timeout, prefix=prefix) as launched:
        yield launched


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: Iterable[int], within: float) -> set[int]:
    """The pids still alive after waiting up to `within` seconds."""
    deadline = time.monotonic() + within
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
