"""The `servegraph` command: serve a graph, run one of its workers, call a served graph, draw one, deploy one
on Kubernetes."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import auth, tls
from .dsl.graph import Graph
from .errors import GraphError, ServingError
from .serving.router import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_MB, DEFAULT_PORT, DEFAULT_WORKER_PORT, PortUnavailable

if TYPE_CHECKING:
    from servegraph.clients import Client

DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"


def load_graph(target: str) -> Graph:
    """``MODULE:ATTR`` (or ``path/to/file.py:ATTR``) → the Graph, or what a factory function returns."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise GraphError(f"expected MODULE:ATTR (e.g. examples.demo:graph), got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise GraphError(f"no graph module at {path}")
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise GraphError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not (module_name + ".").startswith(error.name + "."):
                raise  # an import inside the user's module failed: its traceback says where
            raise GraphError(f"no module named '{error.name}' (looked in {os.getcwd()} and sys.path)") from None
    try:
        graph = getattr(module, attr)
    except AttributeError:
        raise GraphError(f"module '{module_name}' has no attribute '{attr}'") from None
    if callable(graph) and not isinstance(graph, Graph):
        graph = graph()
    if not isinstance(graph, Graph):
        raise GraphError(f"{target} is a {type(graph).__name__}, not a servegraph Graph")
    return graph


def _server_credentials(args: argparse.Namespace) -> Any:
    """The server TLS of `serve` or `worker`, read first: a wrong file fails before the graph's models load."""
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        raise tls.CredentialsError("--tls-cert and --tls-key go together, and --tls-client-ca needs them")
    return tls.server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None


def _remote(text: str) -> tuple[str, list[str]]:
    """``NAME=ADDR[,ADDR...]`` (an ADDR is ``host:port`` or ``dns:///name:port``) → the name and addresses."""
    from .hosting.remote import DNS, split_address

    name, sep, addresses = text.partition("=")
    targets = [address.strip() for address in addresses.split(",") if address.strip()]
    if not sep or not name or not targets:
        raise argparse.ArgumentTypeError(f"expected NAME=ADDR[,ADDR...], got {text!r}")
    for target in targets:
        try:
            split_address(target.removeprefix(DNS))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return name, targets


def _worker_credentials(args: argparse.Namespace) -> Any:
    """The TLS to reach remote workers with (mutual TLS with a certificate), or None."""
    if not (args.worker_tls_ca or args.worker_tls_cert or args.worker_tls_key):
        return None
    if not args.remote:
        raise tls.CredentialsError("--worker-tls-ca, --worker-tls-cert and --worker-tls-key apply to --remote workers")
    if not args.worker_tls_ca or bool(args.worker_tls_cert) != bool(args.worker_tls_key):
        raise tls.CredentialsError("--worker-tls-cert and --worker-tls-key go together, and need --worker-tls-ca")
    return tls.channel_credentials(args.worker_tls_ca, args.worker_tls_cert, args.worker_tls_key)


def _serve(args: argparse.Namespace) -> int:
    from .serving import router

    credentials = _server_credentials(args)
    worker_credentials = _worker_credentials(args)
    remotes: dict[str, list[str]] = {}
    for name, targets in args.remote or ():
        remotes.setdefault(name, []).extend(targets)
    tokens = auth.read_tokens(args.auth_token_file) if args.auth_token_file else None
    graph = load_graph(args.target)
    guards = [("mutual TLS" if args.tls_client_ca else "TLS")] if credentials else []
    guards += ["bearer tokens"] if tokens else []
    guards += ["no reflection"] if args.no_reflection else []
    suffix = f" ({', '.join(guards)})" if guards else ""  # the operator sees what guards the port

    def ready(served: router.Router) -> None:
        if served.metrics_port is not None:
            print(f"servegraph: metrics on http://{args.host}:{served.metrics_port}/metrics", flush=True)
        print(f"servegraph: serving graph '{graph.name}' on {args.host}:{served.port}{suffix}", flush=True)

    router.run(
        graph,
        args.host,
        args.port,
        max_message_mb=args.max_message_mb,
        grace=args.grace,
        metrics_port=args.metrics_port,
        records=args.records,
        credentials=credentials,
        tokens=tokens,
        reflection=not args.no_reflection,
        remotes=remotes,
        worker_credentials=worker_credentials,
        on_ready=ready,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    """Become the worker of one model (or of the pool) of the graph: the graph is loaded here, to know
    what the worker hosts, then this process execs a fresh worker interpreter (the pid stays, for
    whoever signals it), handing it the declarations in an unlinked temporary file: never on the
    command line, where parameters such as API keys would show."""
    from .hosting.endpoints import POOL, EndpointRegistry
    from .hosting.process import worker_environment
    from .models.placement import declarations

    _server_credentials(args)
    registry = EndpointRegistry(load_graph(args.target))
    if args.pool:
        name, placements = POOL, registry.worker_placements()[1]
        if not placements:
            raise GraphError(f"graph '{registry.graph.name}' has no process_pool models for --pool to serve")
    else:
        name, placements = registry.worker_of(args.model)
        if name != args.model:
            raise GraphError(f"model '{args.model}' is a process_pool model: serve the whole pool with --pool")
    declared, path = tempfile.mkstemp(prefix="servegraph-worker-")
    os.unlink(path)
    os.write(declared, json.dumps(declarations(placements)).encode())
    os.lseek(declared, 0, os.SEEK_SET)
    os.set_inheritable(declared, True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    argv = [sys.executable, "-m", "servegraph.workers.worker", "--name", name, "--listen", f"{host}:{args.port}"]
    argv += ["--placements-fd", str(declared), "--grace", str(args.grace)]
    for flag in ("tls_cert", "tls_key", "tls_client_ca"):
        if getattr(args, flag):
            argv += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, worker_environment())


def _client(args: argparse.Namespace) -> Client:
    """The client that `invoke`, `describe` and `stats` call with, from their shared options."""
    from servegraph.clients import Client

    return Client(
        args.address,
        timeout=args.timeout,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=auth.read_tokens(args.token_file)[0] if args.token_file else None,
    )


def _invoke(args: argparse.Namespace) -> int:
    body = json.loads(args.body) if args.body is not None else None
    with _client(args) as client:
        if args.stream:
            for chunk in client.stream(body, args.path):
                print(_dumps(chunk), flush=True)
        else:
            print(_dumps(client.invoke(body, args.path)))
    return 0


def _describe(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(client.describe(), indent=2))
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        endpoints = client.stats()
    columns = ("requests", "failures", "p50 ms", "p99 ms", "tokens in", "tokens out")
    print(f"{'endpoint':<24} " + " ".join(f"{column:>10}" for column in columns))
    for row in endpoints:
        print(
            f"{row['name']:<24} {row['requests']:>10} {row['failures']:>10} {row['p50_ms']:>10.2f}"
            f" {row['p99_ms']:>10.2f} {row['tokens_in']:>10} {row['tokens_out']:>10}"
        )
    return 0


def _plot(args: argparse.Namespace) -> int:
    print(load_graph(args.target).plot(), end="")
    return 0


def _manifests(args: argparse.Namespace) -> int:
    from .serving import manifests

    if args.tls_client_auth and not args.tls_secret:
        print("servegraph: --tls-client-auth needs --tls-secret", file=sys.stderr)
        return 2
    options = manifests.Options(
        args.image, args.namespace, args.router_replicas, args.tls_secret, args.tls_client_auth, args.token_secret
    )
    print(manifests.render(manifests.generate(load_graph(args.target), args.target, options)), end="")
    return 0


def _dumps(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else repr(v))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="servegraph", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a graph over gRPC")
    serve.add_argument("target", help="MODULE:ATTR naming a Graph (or a function returning one)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (printed)")
    serve.add_argument("--max-message-mb", type=int, default=DEFAULT_MAX_MESSAGE_MB)
    serve.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on shutdown")
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    serve.add_argument(
        "--records", default=None, help="file for per-call monitoring records (default servegraph-records/GRAPH.jsonl)"
    )
    serve.add_argument("--tls-cert", help="PEM certificate (chain): serve TLS; needs --tls-key")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="PEM CA: mutual TLS, only clients with a certificate it signed")
    serve.add_argument(
        "--auth-token-file", help="file of valid tokens, one a line: calls need 'authorization: Bearer TOKEN'"
    )
    serve.add_argument("--no-reflection", action="store_true", help="do not serve gRPC server reflection")
    serve.add_argument(
        "--remote",
        action="append",
        type=_remote,
        metavar="NAME=ADDR[,ADDR...]",
        help="reach this model's worker at these replicas (host:port, or dns:///name:port for every address of "
        "the name) instead of starting it: a dedicated_process or shared model, or a process_pool model for the pool",
    )
    serve.add_argument("--worker-tls-ca", help="PEM CA: reach --remote workers with TLS, trusting this CA")
    serve.add_argument("--worker-tls-cert", help="PEM client certificate for --remote workers (mutual TLS)")
    serve.add_argument("--worker-tls-key", help="PEM private key of --worker-tls-cert")
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="serve one worker of a graph over TCP, for routers on other hosts")
    worker.add_argument("target", help="MODULE:ATTR naming the Graph the routers serve")
    hosted = worker.add_mutually_exclusive_group(required=True)
    hosted.add_argument("--model", help="the dedicated_process or shared model to host")
    hosted.add_argument("--pool", action="store_true", help="host every process_pool model")
    worker.add_argument("--host", default=DEFAULT_HOST)
    worker.add_argument("--port", type=int, default=DEFAULT_WORKER_PORT, help="0 picks a free port (printed)")
    worker.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get on SIGTERM")
    worker.add_argument("--tls-cert", help="PEM certificate (chain): serve TLS; needs --tls-key")
    worker.add_argument("--tls-key", help="PEM private key of --tls-cert")
    worker.add_argument("--tls-client-ca", help="PEM CA: mutual TLS, only routers with a certificate it signed")
    worker.set_defaults(run=_worker)

    for name, run, help_text in (
        ("invoke", _invoke, "send one event to a served graph"),
        ("describe", _describe, "show a served graph's steps and endpoints"),
        ("stats", _stats, "show a served graph's model endpoints: counts, latency, tokens"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--address", default=DEFAULT_ADDRESS)
        command.add_argument("--timeout", type=float, default=None)
        command.add_argument("--tls-ca", help="PEM CA to trust: connect with TLS")
        command.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS (with --tls-key)")
        command.add_argument("--tls-key", help="PEM private key of --tls-cert")
        command.add_argument("--token-file", help="file whose first token (line) is sent as the bearer token")
        command.set_defaults(run=run)
        if name == "invoke":
            command.add_argument("--body", help="the event body as JSON")
            command.add_argument("--path", default="/")
            command.add_argument("--stream", action="store_true", help="print chunks as they arrive")

    plot = commands.add_parser("plot", help="print a graph as a Mermaid flowchart")
    plot.add_argument("target", help="MODULE:ATTR naming a Graph")
    plot.set_defaults(run=_plot)

    k8s = commands.add_parser("manifests", help="print Kubernetes Deployments and Services that serve a graph")
    k8s.add_argument("target", help="MODULE:ATTR naming a Graph, as the image imports it")
    k8s.add_argument("--image", required=True, help="the image every pod runs (see the Dockerfile)")
    k8s.add_argument("--namespace", default="default")
    k8s.add_argument("--router-replicas", type=int, default=1)
    k8s.add_argument("--tls-secret", help="kubernetes.io/tls Secret (with ca.crt): TLS to the router, mTLS to workers")
    k8s.add_argument("--tls-client-auth", action="store_true", help="the router too requires client certificates")
    k8s.add_argument("--token-secret", help="Secret whose key 'tokens' lists the router's bearer tokens")
    k8s.set_defaults(run=_manifests)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SERVEGRAPH_LOG", "INFO"), format="%(asctime)s %(name)s %(message)s")
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (GraphError, ServingError) as error:
        print(f"servegraph: {error}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as error:
        print(f"servegraph: --body is not valid JSON: {error}", file=sys.stderr)
        return 2
    except (PortUnavailable, tls.CredentialsError) as error:
        print(f"servegraph: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
