"""Starting real servers for tests: `servegraph serve` in its own process, always stopped after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from servegraph.serving.launcher import LaunchedRouter, launch, stop

TESTS_DIR = Path(__file__).resolve().parent

__all__ = ["TESTS_DIR", "serve", "stop"]


@contextlib.contextmanager
def serve(target: str, *args: str, timeout: float = 60.0) -> Iterator[LaunchedRouter]:
    """Serve ``TARGET`` (a module of the tests folder) on a free port until the block ends."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    with launch(target, *args, cwd=TESTS_DIR, env=env, timeout=timeout) as router:
        yield router
