"""Where each model runs: the hub places every model of a graph when the engine starts.

naive, asyncio and thread_pool models are loaded in the router; each dedicated_process model and
each shared model in a worker process of its own; all process_pool models together in one pool of
worker processes. Each placement yields a handle (`handles.py`), set on the registry entries of the
endpoints it serves, so the model runner never cares where a model lives.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..dsl.graph import Graph
from ..dsl.model_runner import ModelRunnerStep
from ..errors import ModelRunnerError
from ..models.hosted import HostedModel, streams
from .endpoints import EndpointRegistry
from .handles import LocalHandle, ModelHandle, WorkerHandle
from .pool import WorkerPool
from .process import Placement, WorkerProcess


class ModelHub:
    """Loads and starts every model of a graph where its execution mechanism says."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.endpoints = EndpointRegistry(graph)
        self.handles: dict[str, ModelHandle] = {}
        self.workers: list[WorkerProcess] = []
        self.pools: list[WorkerPool] = []
        self.executors: list[ThreadPoolExecutor] = []
        self._socket_dir: Path | None = None

    def hosts_workers(self) -> bool:
        """Whether some model runs in a worker process (which the router must then supervise)."""
        return any(spec.in_worker for spec, _, _ in self.endpoints.placements().values())

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        for endpoint in self.endpoints.models():
            endpoint.handle = self.handles[endpoint.model.name]  # type: ignore[union-attr]

    def check(self) -> None:
        """Refuse, before anything loads, models that cannot serve as declared (MLRun's ModelRunnerError)."""
        refused = {}
        for name, (spec, _, _) in self.endpoints.placements().items():
            why = spec.model_class.cannot_serve(name, spec.execution_mechanism, spec.model_artifact)
            if why:
                refused[name] = why
        if refused:
            raise ModelRunnerError(refused)

    async def _start(self) -> None:
        self.check()
        pooled: dict[str, Placement] = {}
        dedicated: dict[str, Placement] = {}
        step_executors: dict[str, tuple[ThreadPoolExecutor, int]] = {}
        for name, (spec, step, proxies) in self.endpoints.placements().items():
            mechanism = spec.execution_mechanism
            if mechanism == "process_pool" and step is not None:
                pooled[name] = Placement(spec, proxies)
            elif spec.in_worker:
                dedicated[name] = Placement(spec, proxies)
            else:
                executor, threads = self._executor(step, step_executors) if mechanism == "thread_pool" else (None, 1)
                model = HostedModel(spec, proxies)
                await asyncio.to_thread(model.load)
                self.handles[name] = LocalHandle(model, executor, threads)
        if pooled or dedicated:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="servegraph-"))
        starting = []
        for name, placement in dedicated.items():
            device = placement.spec.parameters.get("device")
            pool = self._pool([WorkerProcess(name, {name: placement}, self._socket_dir, device=device)])  # type: ignore[arg-type]
            self.handles[name] = WorkerHandle(placement.spec, streams(placement.spec), pool)
            starting.append(pool.start())
        if pooled:
            pool = self._pool(
                [WorkerProcess(f"pool-{i}", pooled, self._socket_dir) for i in range(self._pool_size())]  # type: ignore[arg-type]
            )
            for name, placement in pooled.items():
                self.handles[name] = WorkerHandle(placement.spec, streams(placement.spec), pool)
            starting.append(pool.start())
        results = await asyncio.gather(*starting, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def stop(self) -> None:
        await asyncio.gather(*(pool.stop() for pool in self.pools), return_exceptions=True)
        for executor in self.executors:
            executor.shutdown(wait=False, cancel_futures=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _pool(self, processes: list[WorkerProcess]) -> WorkerPool:
        self.workers.extend(processes)
        pool = WorkerPool(processes)
        self.pools.append(pool)
        return pool

    def _executor(
        self, step_name: str | None, by_step: dict[str, tuple[ThreadPoolExecutor, int]]
    ) -> tuple[ThreadPoolExecutor, int]:
        """The thread pool of a step's thread_pool models (one for the shared models), and its size."""
        key = step_name or ""
        if key not in by_step:
            step = self.graph.steps.get(key)
            step_threads = step.max_threads if isinstance(step, ModelRunnerStep) else None
            threads = step_threads or self.graph.max_threads or min(32, (os.cpu_count() or 1) + 4)
            by_step[key] = ThreadPoolExecutor(threads, thread_name_prefix=f"models-{key or 'shared'}"), threads
            self.executors.append(by_step[key][0])
        return by_step[key]

    def _pool_size(self) -> int:
        sizes = [
            step.max_processes
            for step in self.graph.steps.values()
            if isinstance(step, ModelRunnerStep) and step.max_processes
        ]
        return self.graph.max_processes or max(sizes, default=0) or os.cpu_count() or 1
