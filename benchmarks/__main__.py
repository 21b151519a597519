"""Run the benchmark modules: ``python -m benchmarks`` runs every ``bench_*.py`` in this folder in name order;
``python -m benchmarks mock router`` runs only ``bench_mock`` and ``bench_router``."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def modules() -> list[str]:
    return sorted(path.stem for path in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    available = modules()
    wanted = [name if name.startswith("bench_") else f"bench_{name}" for name in argv]
    unknown = [name for name in wanted if name not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {[name[6:] for name in available]}", file=sys.stderr)
        return 2
    for name in wanted or available:
        print(f"== {name} ==", flush=True)
        started = time.perf_counter()
        importlib.import_module(f"{__package__}.{name}").main()
        print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
