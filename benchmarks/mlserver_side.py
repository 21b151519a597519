"""MLServer as the V2 benchmark's point of comparison, served from its own virtualenv.

MLServer pins dependencies (protobuf, pydantic, fastapi, ...) that servegraph's environment does not share, and it
registers the ``inference.*`` messages in protobuf's default pool, so it lives in `.venv-mlserver` at the repository
root (created on first use, reused while its stamp names the same version) and runs only as a subprocess. What it
serves is `Identity` below, the equivalent of servegraph's `benchmarks.served.Identity`: its first input back as
its only output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from servegraph.serving.v2_protocol import message

VERSION = "1.7.1"
# uvloop 0.22 raises in asyncio.get_event_loop() without a running loop, which kills every worker of MLServer's
# inference pool at start (SeldonIO/MLServer#2286, unfixed in 1.7.1); mlflow pins it the same way.
REQUIREMENTS = (f"mlserver=={VERSION}", "uvloop<0.22")
VENV = Path(__file__).resolve().parent.parent / ".venv-mlserver"
STAMP = VENV / "servegraph-bench.stamp"
MODEL = "identity"

# parallel_workers 0: the model runs in MLServer's main process; 1 is MLServer's default, one inference pool worker;
# then the adaptive batching of its model settings (max_batch_size, max_batch_time in seconds).
CONFIGS: dict[str, tuple[int, int]] = {"in-process": (0, 0), "worker pool": (1, 0), "worker pool, batching": (1, 8)}
MAX_BATCH_TIME = 0.002

IDENTITY = '''"""servegraph's benchmarks.served.Identity for MLServer: the first input back as the only output."""

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class Identity(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        first = payload.inputs[0]
        output = ResponseOutput(name="output0", shape=first.shape, datatype=first.datatype, data=first.data)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[output])
'''


class Unavailable(RuntimeError):
    """MLServer cannot be installed or started; the message is one line saying why."""


@dataclass
class Served:
    address: str
    pid: int


def last_line(text: str | Path) -> str:
    """The last non-blank line of a tool's output: pip and MLServer put the reason for a failure there."""
    if isinstance(text, Path):
        text = text.read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def ensure_installed() -> Path:
    """The `mlserver` executable of `.venv-mlserver`, creating the environment first if its stamp is missing.

    The stamp is written only after MLServer imports, so an interrupted or failed install is retried next time.
    The environment is made by this interpreter (MLServer 1.7 needs Python < 3.13; `python3` on PATH may be newer).
    """
    executable = VENV / "bin" / "mlserver"
    if STAMP.is_file() and STAMP.read_text().split() == list(REQUIREMENTS) and executable.is_file():
        return executable
    print(f"installing {' '.join(REQUIREMENTS)} into {VENV.name} (first use, a few minutes)", flush=True)
    python = VENV / "bin" / "python"
    steps = (
        ("creating the virtualenv", [sys.executable, "-m", "venv", str(VENV)]),
        ("pip install", [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS]),
        ("import check", [str(python), "-c", "import mlserver, mlserver.grpc"]),
    )
    for what, command in steps:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise Unavailable(f"{what} failed: {error}") from error
        if done.returncode != 0:
            raise Unavailable(f"{what} failed (exit {done.returncode}): {last_line(done.stderr + done.stdout)}")
    if not executable.is_file():
        raise Unavailable(f"{executable} missing after install")
    STAMP.write_text("\n".join(REQUIREMENTS) + "\n")
    return executable


def free_port() -> int:
    """A port free right now on 127.0.0.1; MLServer takes fixed port numbers, so they are picked here."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_repository(folder: Path, parallel_workers: int, max_batch_size: int) -> str:
    """settings.json and the identity model's folder; returns the gRPC address.

    debug off: it adds an access-log interceptor to every gRPC call. Metrics off (`metrics_endpoint` null): no
    third port and no Prometheus interceptor; servegraph's router serves no metrics in the benchmark either.
    """
    grpc_port, http_port = free_port(), free_port()
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_endpoint": None,
        "parallel_workers": parallel_workers,
        "environments_dir": str(folder / ".envs"),
        "metrics_dir": str(folder / ".metrics"),
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    model = folder / MODEL
    model.mkdir()
    (model / "identity.py").write_text(IDENTITY)
    model_settings: dict[str, object] = {"name": MODEL, "implementation": "identity.Identity"}
    if max_batch_size:
        model_settings.update(max_batch_size=max_batch_size, max_batch_time=MAX_BATCH_TIME)
    (model / "model-settings.json").write_text(json.dumps(model_settings))
    return f"127.0.0.1:{grpc_port}"


async def model_ready(address: str) -> bool:
    """V2 ModelReady over a plain channel, with messages from servegraph's private pool (the wire is the same)."""
    request = message("ModelReadyRequest")(name=MODEL).SerializeToString()
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")
        try:
            reply = await call(request, timeout=2)
        except grpc.aio.AioRpcError:
            return False
    return message("ModelReadyResponse").FromString(reply).ready


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (MLServer stops its pool), then SIGKILL to the process group, which also takes any orphaned worker."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def serve(executable: Path, config: tuple[int, int], timeout: float = 180.0) -> Iterator[Served]:
    """`mlserver start` on a temporary repository until the block ends; yields once the model says it is ready."""
    with tempfile.TemporaryDirectory(prefix="mlserver-bench-") as directory:
        folder = Path(directory)
        address = write_repository(folder, *config)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("MLSERVER_") and key not in ("PYTHONPATH", "PYTHONHOME")
        }
        env["PATH"] = f"{executable.parent}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(VENV)
        log_path = folder / "mlserver.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(executable), "start", str(folder)],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout
            while not asyncio.run(model_ready(address)):
                if process.poll() is not None:
                    raise Unavailable(f"mlserver exited ({process.returncode}): {last_line(log_path)}")
                if time.monotonic() > deadline:
                    raise Unavailable(f"not ready after {timeout:.0f} s: {last_line(log_path)}")
                time.sleep(0.5)
            yield Served(address, process.pid)
        finally:
            stop(process)
