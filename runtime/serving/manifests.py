"""Kubernetes manifests for a graph (`servegraph manifests`): the graph decides which objects exist.

Models are placed as `ModelHub` places them on one machine, with pods for processes: the router's
Deployment runs the graph and its naive, asyncio and thread_pool models; each dedicated_process
model and each shared model gets a Deployment of its own; the process_pool models share one pool
Deployment. Each worker Deployment sits behind a headless Service, so that the router's
``--remote NAME=dns:///...`` target resolves to every ready pod and gRPC spreads calls over them.
Every pod runs the same image, whose entry point is `servegraph`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ..dsl.graph import Graph
from ..dsl.model_runner import ModelRunnerStep
from ..errors import GraphError
from ..hosting.endpoints import EndpointRegistry
from ..models.spec import ModelSpec
from .router import DEFAULT_PORT, DEFAULT_WORKER_PORT

ROUTER_PORT = DEFAULT_PORT
WORKER_PORT = DEFAULT_WORKER_PORT
METRICS_PORT = 9090
TLS_DIR = "/etc/servegraph/tls"
"""Where a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) is mounted in every pod."""
TOKEN_DIR = "/etc/servegraph/auth"
TOKEN_KEY = "tokens"
"""The key of the token Secret that holds the router's bearer tokens, one a line."""
STARTUP_SECONDS = 600
"""How long a pod may load its models before Kubernetes restarts it (liveness waits for startup)."""

APP_PROTOCOLS = {"grpc": "grpc", "metrics": "http"}
"""What each named port speaks, for meshes and ingress controllers that route by protocol."""

Manifest = dict[str, Any]

# The native gRPC probe speaks plaintext only; with TLS the pod checks itself with its own certificate
# (accepted where mutual TLS is on, since ca.crt signed it), naming the Service its certificate names.
TLS_PROBE = (
    "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
    'r = lambda n: open("{dir}/" + n, "rb").read(); '
    'c = grpc.secure_channel("127.0.0.1:{port}", grpc.ssl_channel_credentials(r("ca.crt"), r("tls.key"), '
    'r("tls.crt")), [("grpc.ssl_target_name_override", "{host}")]); '
    "sys.exit(g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=4).status != h.HealthCheckResponse.SERVING)"
)


@dataclass(frozen=True)
class Options:
    """What the cluster adds to the graph: the image, where, how many routers, which Secrets."""

    image: str
    namespace: str = "default"
    router_replicas: int = 1
    tls_secret: str | None = None
    """A kubernetes.io/tls Secret with ca.crt: TLS everywhere, workers accept only certificates ca.crt signed."""
    tls_client_auth: bool = False
    """With `tls_secret`: the router too accepts only clients with a certificate ca.crt signed."""
    token_secret: str | None = None
    """A Secret whose key `tokens` lists the bearer tokens the router accepts."""


@dataclass(frozen=True)
class WorkerGroup:
    """One worker Deployment and its headless Service: the models it hosts and how its pods run."""

    name: str
    models: tuple[str, ...]
    selects: tuple[str, ...]
    """The `servegraph worker` arguments that pick its models: ``--model NAME`` or ``--pool``."""
    replicas: int
    gpu: bool
    labels: dict[str, str]


def dns_label(*parts: str) -> str:
    """`parts` joined as a DNS-1035 label (what a Service name must be): lowercase letters, digits and
    '-', starting with a letter, at most 63 characters. A name cut short ends in a hash of the whole,
    so that long names sharing a prefix stay distinct."""
    whole = "-".join(parts)
    label = re.sub(r"[^a-z0-9]+", "-", whole.lower()).strip("-")
    if not label[:1].isalpha():
        label = f"sg-{label}".rstrip("-")
    if len(label) > 63:
        label = label[:54].rstrip("-") + "-" + hashlib.sha256(whole.encode()).hexdigest()[:8]
    return label


def worker_groups(graph: Graph) -> list[WorkerGroup]:
    """The graph's worker Deployments, split as `ModelHub` splits worker processes."""
    groups: list[WorkerGroup] = []
    dedicated, placed_in_pool = EndpointRegistry(graph).worker_placements()
    for name, placement in dedicated.items():
        groups.append(
            WorkerGroup(
                dns_label(graph.name, "worker", name),
                (name,),
                ("--model", name),
                _replicas(placement.spec) or 1,
                _gpu(placement.spec),
                {"servegraph.io/model": dns_label(name)},
            )
        )
    pooled = [placement.spec for placement in placed_in_pool.values()]
    if pooled:
        replicas = max((_replicas(spec) for spec in pooled), default=0) or _pool_size(graph)
        groups.append(
            WorkerGroup(
                dns_label(graph.name, "pool"),
                tuple(spec.name for spec in pooled),
                ("--pool",),
                replicas,
                any(_gpu(spec) for spec in pooled),
                {"servegraph.io/pool": "true"},
            )
        )
    names = [group.name for group in groups]
    if len(set(names)) < len(names):
        raise GraphError(f"graph '{graph.name}': worker names must differ in more than case and punctuation: {names}")
    return groups


def generate(graph: Graph, target: str, options: Options) -> list[Manifest]:
    """The Deployments and Services that serve `graph`, whose pods load it from ``target`` (MODULE:ATTR)."""
    module = target.partition(":")[0]
    if module.endswith(".py") or os.sep in module:
        raise GraphError(
            f"the pods import the graph by module: give MODULE:ATTR (e.g. mypkg.graphs:graph), not {target}"
        )
    instance = dns_label(graph.name)
    base = {"app.kubernetes.io/name": "servegraph", "app.kubernetes.io/instance": instance}
    tls = ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"] if options.tls_secret else []
    objects: list[Manifest] = []
    remotes: list[str] = []
    for group in worker_groups(graph):
        labels = {**base, "app.kubernetes.io/component": "worker", **group.labels}
        host = f"{group.name}.{options.namespace}.svc.cluster.local"
        args = ["worker", target, *group.selects, "--host", "0.0.0.0", "--port", str(WORKER_PORT)]
        if options.tls_secret:
            args += [*tls, "--tls-client-ca", f"{TLS_DIR}/ca.crt"]
        container = _container("worker", options, args, {"grpc": WORKER_PORT}, host)
        if group.gpu:
            container["resources"] = {"limits": {"nvidia.com/gpu": 1}}
        objects += [
            _deployment(group.name, labels, group.replicas, container, options),
            _service(group.name, labels, {"grpc": WORKER_PORT}, options.namespace, headless=True),
        ]
        remotes += [arg for model in group.models for arg in ("--remote", f"{model}=dns:///{host}:{WORKER_PORT}")]

    name = dns_label(graph.name, "router")
    labels = {**base, "app.kubernetes.io/component": "router"}
    args = ["serve", target, "--host", "0.0.0.0", "--port", str(ROUTER_PORT), "--metrics-port", str(METRICS_PORT)]
    args += remotes
    if options.tls_secret:
        args += tls
        if options.tls_client_auth:
            args += ["--tls-client-ca", f"{TLS_DIR}/ca.crt"]
        if remotes:
            args += ["--worker-tls-ca", f"{TLS_DIR}/ca.crt"]
            args += ["--worker-tls-cert", f"{TLS_DIR}/tls.crt", "--worker-tls-key", f"{TLS_DIR}/tls.key"]
    if options.token_secret:
        args += ["--auth-token-file", f"{TOKEN_DIR}/{TOKEN_KEY}"]
    ports = {"grpc": ROUTER_PORT, "metrics": METRICS_PORT}
    container = _container("router", options, args, ports, f"{name}.{options.namespace}.svc.cluster.local")
    router = [
        _deployment(name, labels, options.router_replicas, container, options),
        _service(name, labels, ports, options.namespace, headless=False),
    ]
    return router + objects


class _Dumper(yaml.SafeDumper):
    """Writes shared dicts (labels, probes) out in full: no YAML anchors for a reader to chase."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(objects: list[Manifest]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False)


def _replicas(spec: ModelSpec) -> int:
    """The model's ``replicas`` parameter (0 when unset)."""
    value = spec.parameters.get("replicas", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GraphError(f"model '{spec.name}': replicas must be an integer >= 1, got {value!r}")
    return value


def _gpu(spec: ModelSpec) -> bool:
    return str(spec.parameters.get("device", "")).startswith("cuda")


def _pool_size(graph: Graph) -> int:
    """Pool pods as `ModelHub` sizes its pool, but one rather than a CPU count when nothing says."""
    sizes = [step.max_processes for step in graph.steps.values() if isinstance(step, ModelRunnerStep)]
    return graph.max_processes or max((size for size in sizes if size), default=0) or 1


def _container(role: str, options: Options, args: list[str], ports: dict[str, int], host: str) -> Manifest:
    """`servegraph ARGS` with its ports, its Secrets mounted, and health probes on its gRPC port."""
    if options.tls_secret:
        script = TLS_PROBE.format(dir=TLS_DIR, port=ports["grpc"], host=host)
        check: Manifest = {"exec": {"command": ["python", "-c", script]}}
    else:
        check = {"grpc": {"port": ports["grpc"]}}
    mounts = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}] if options.tls_secret else []
    if options.token_secret and role == "router":
        mounts.append({"name": "auth-token", "mountPath": TOKEN_DIR, "readOnly": True})
    container: Manifest = {
        "name": role,
        "image": options.image,
        "args": args,
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports.items()],
        "startupProbe": {**check, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": STARTUP_SECONDS // 5},
        "readinessProbe": {**check, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": {**check, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
    }
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _deployment(name: str, labels: dict[str, str], replicas: int, container: Manifest, options: Options) -> Manifest:
    volumes: list[Manifest] = []
    mounted = {mount["name"] for mount in container.get("volumeMounts", [])}
    if "tls" in mounted:
        volumes.append({"name": "tls", "secret": {"secretName": options.tls_secret}})
    if "auth-token" in mounted:
        items = [{"key": TOKEN_KEY, "path": TOKEN_KEY}]
        volumes.append({"name": "auth-token", "secret": {"secretName": options.token_secret, "items": items}})
    pod: Manifest = {"securityContext": {"runAsNonRoot": True}, "containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _service(name: str, labels: dict[str, str], ports: dict[str, int], namespace: str, headless: bool) -> Manifest:
    """A headless Service (no cluster IP) makes DNS answer every ready pod, for the router to balance over."""
    spec: Manifest = {
        "selector": labels,
        "ports": [
            {
                "name": port_name,
                "port": port,
                "targetPort": port,
                "protocol": "TCP",
                "appProtocol": APP_PROTOCOLS[port_name],
            }
            for port_name, port in ports.items()
        ],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }
