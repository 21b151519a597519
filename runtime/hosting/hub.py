"""Where each model runs: the hub places every model of a graph when the engine starts.

naive, asyncio and thread_pool models are loaded in the router; each dedicated_process model and
each shared model in a worker process of its own; all process_pool models together in one pool of
worker processes. A worker named in `remotes` is not spawned: its replicas run on other hosts
(`remote.py`). Each placement yields a handle (`handles.py`), set on the registry entries of the
endpoints it serves, so the model runner never cares where a model lives.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from ..dsl.graph import Graph
from ..dsl.model_runner import ModelRunnerStep
from ..errors import GraphError, ModelRunnerError
from ..models.hosted import HostedModel, streams
from ..models.placement import Placement
from .endpoints import POOL, EndpointRegistry
from .handles import LocalHandle, ModelHandle, WorkerHandle
from .link import WorkerLink
from .pool import WorkerPool
from .process import WorkerProcess
from .remote import RemotePool


class ModelHub:
    """Loads and starts every model of a graph where its execution mechanism says.

    `remotes` maps model names to the addresses of workers that run elsewhere (``--remote``): a
    dedicated_process model, a shared model, or any process_pool model (meaning the whole pool);
    `worker_credentials` is the TLS to reach them with."""

    def __init__(
        self,
        graph: Graph,
        remotes: Mapping[str, Sequence[str]] | None = None,
        worker_credentials: grpc.ChannelCredentials | None = None,
    ):
        self.graph = graph
        self.endpoints = EndpointRegistry(graph)
        self.handles: dict[str, ModelHandle] = {}
        self.pools: list[WorkerPool] = []
        self.executors: list[ThreadPoolExecutor] = []
        self.worker_credentials = worker_credentials
        self.remotes: dict[str, list[str]] = {}
        """Addresses by worker name (a model's, or `POOL`): what `remotes` names, checked now."""
        for name, addresses in (remotes or {}).items():
            try:
                worker, _ = self.endpoints.worker_of(name)
            except GraphError as error:
                raise GraphError(f"--remote {name}: {error}") from None
            known = self.remotes.setdefault(worker, [])
            known += [address for address in addresses if address not in known]
        self._socket_dir: Path | None = None

    @property
    def workers(self) -> list[WorkerLink]:
        """Every worker process and remote replica, as they are now (replicas come and go)."""
        return [worker for pool in self.pools for worker in pool.processes]

    def hosts_workers(self) -> bool:
        """Whether some model runs in a worker process (which the router must then supervise)."""
        return any(spec.in_worker for spec, _, _ in self.endpoints.placements().values())

    def serving(self) -> bool:
        """Whether every model can take calls: each worker's model has a live worker, not hung."""
        return all(handle.ready() for handle in self.handles.values())

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
        dedicated, pooled = self.endpoints.worker_placements()
        step_executors: dict[str, tuple[ThreadPoolExecutor, int]] = {}
        for name, (spec, step, proxies) in self.endpoints.placements().items():
            if not spec.in_worker:
                mechanism = spec.execution_mechanism
                executor, threads = self._executor(step, step_executors) if mechanism == "thread_pool" else (None, 1)
                model = HostedModel(spec, proxies)
                await asyncio.to_thread(model.load)
                self.handles[name] = LocalHandle(model, executor, threads)
        for name, placement in dedicated.items():
            pool = self._pool(name, {name: placement}, [name], placement.spec.parameters.get("device"))
            self.handles[name] = WorkerHandle(placement.spec, streams(placement.spec), pool)
        if pooled:
            pool = self._pool(POOL, pooled, [f"{POOL}-{i}" for i in range(self._pool_size())])
            for name, placement in pooled.items():
                self.handles[name] = WorkerHandle(placement.spec, streams(placement.spec), pool)
        results = await asyncio.gather(*(pool.start() for pool in self.pools), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def stop(self) -> None:
        await asyncio.gather(*(pool.stop() for pool in self.pools), return_exceptions=True)
        for executor in self.executors:
            executor.shutdown(wait=False, cancel_futures=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _pool(
        self, name: str, placements: dict[str, Placement], processes: list[str], device: str | None = None
    ) -> WorkerPool:
        """The workers of `name`: its replicas if it is remote, else worker processes named `processes`."""
        if name in self.remotes:
            pool: WorkerPool = RemotePool(name, placements, self.remotes[name], self.worker_credentials)
        else:
            pool = WorkerPool([WorkerProcess(each, placements, self._sockets(), device=device) for each in processes])
        self.pools.append(pool)
        return pool

    def _sockets(self) -> Path:
        """The private directory of the spawned workers' sockets, made for the first."""
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="servegraph-"))
        return self._socket_dir

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
