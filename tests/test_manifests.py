"""`servegraph manifests`: valid Kubernetes objects (checked offline against the API schemas) wired
as the graph places its models: the router's --remote targets name existing headless Services, worker
pods run `servegraph worker` on their Service's port, probes ask gRPC health, Secrets are mounted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import served_k8s
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from servers import TESTS_DIR

from servegraph.errors import GraphError
from servegraph.serving.manifests import METRICS_PORT, ROUTER_PORT, TLS_PROBE, WORKER_PORT, Options, dns_label, generate

K8S_VERSION = "1.37.0"
"""A Kubernetes version whose schemas kubernetes-validate ships."""
TARGET = "served_k8s:fraud"


def objects(graph=served_k8s.fraud, target=TARGET, **options):
    return generate(graph, target, Options("registry.example/servegraph:1", **options))


def find(found, kind, name):
    (match,) = [o for o in found if o["kind"] == kind and o["metadata"]["name"] == name]
    return match


def container(deployment):
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def flag(args, name):
    return args[args.index(name) + 1]


def workers(found):
    return [
        o
        for o in found
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]


@pytest.mark.parametrize("graph", [served_k8s.fraud, served_k8s.pooled, served_k8s.local])
@pytest.mark.parametrize(
    "options", [{}, {"namespace": "ml", "tls_secret": "sg-tls", "tls_client_auth": True, "token_secret": "sg-tokens"}]
)
def test_every_object_is_valid_for_kubernetes(graph, options):
    for manifest in objects(graph, **options):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_the_graph_places_the_models():
    found = objects()
    names = sorted((o["kind"], o["metadata"]["name"]) for o in found)
    deployments = [
        "fraud-detection-pool",
        "fraud-detection-router",
        "fraud-detection-worker-big-model",
        "fraud-detection-worker-llm",
    ]
    assert names == sorted([*(("Deployment", n) for n in deployments), *(("Service", n) for n in deployments)])
    for manifest in found:  # the in-router model has no pod; the router's pods and Services select their own
        assert "fast" not in manifest["metadata"]["name"]
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "servegraph"
        assert labels["app.kubernetes.io/instance"] == "fraud-detection"
        selector = manifest["spec"]["selector"]
        assert (selector.get("matchLabels") or selector) == labels
    for manifest in found:
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", manifest["metadata"]["name"])


def test_every_remote_names_a_service_with_its_port():
    found = objects(namespace="ml")
    args = container(find(found, "Deployment", "fraud-detection-router"))["args"]
    remotes = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--remote")
    assert sorted(remotes) == ["big_model", "crunch_a", "crunch_b", "llm"]  # not the proxies: they reach llm
    for model, address in remotes.items():
        service_name, port = re.fullmatch(r"dns:///([a-z0-9-]+)\.ml\.svc\.cluster\.local:(\d+)", address).groups()
        service = find(found, "Service", service_name)
        assert service["spec"]["clusterIP"] == "None", "headless: DNS answers every pod"
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == service_port["targetPort"] == int(port)
        deployment = find(found, "Deployment", service_name)
        assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
        if service_name.endswith("pool"):
            assert model in ("crunch_a", "crunch_b")
        else:
            assert deployment["metadata"]["labels"]["servegraph.io/model"] == dns_label(model)


def test_worker_pods_serve_their_models_on_their_service_port():
    found = objects()
    for deployment in workers(found):
        service = find(found, "Service", deployment["metadata"]["name"])
        (service_port,) = service["spec"]["ports"]
        worker = container(deployment)
        args = worker["args"]
        assert args[:2] == ["worker", TARGET]
        assert flag(args, "--host") == "0.0.0.0"
        assert int(flag(args, "--port")) == service_port["targetPort"]
        assert worker["ports"] == [{"name": "grpc", "containerPort": service_port["targetPort"]}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert worker[probe]["grpc"] == {"port": service_port["targetPort"]}
    args = {d["metadata"]["name"]: container(d)["args"] for d in workers(found)}
    assert flag(args["fraud-detection-worker-big-model"], "--model") == "big_model"
    assert flag(args["fraud-detection-worker-llm"], "--model") == "llm"
    assert "--pool" in args["fraud-detection-pool"] and "--model" not in args["fraud-detection-pool"]


def test_replicas_and_gpus_come_from_the_models():
    found = objects()
    big = find(found, "Deployment", "fraud-detection-worker-big-model")
    assert big["spec"]["replicas"] == 2
    assert container(big)["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    llm = find(found, "Deployment", "fraud-detection-worker-llm")
    assert llm["spec"]["replicas"] == 1 and "resources" not in container(llm)
    assert find(found, "Deployment", "fraud-detection-pool")["spec"]["replicas"] == 3  # the step's max_processes
    pooled = objects(served_k8s.pooled, "served_k8s:pooled")
    assert find(pooled, "Deployment", "pooled-pool")["spec"]["replicas"] == 4  # a model's replicas parameter
    assert find(objects(router_replicas=3), "Deployment", "fraud-detection-router")["spec"]["replicas"] == 3


def test_the_router_serves_grpc_and_metrics_on_all_interfaces():
    found = objects()
    router = container(find(found, "Deployment", "fraud-detection-router"))
    assert router["args"][:2] == ["serve", TARGET]
    assert flag(router["args"], "--host") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert ports == {
        "grpc": int(flag(router["args"], "--port")),
        "metrics": int(flag(router["args"], "--metrics-port")),
    }
    assert router["readinessProbe"]["grpc"] == {"port": ports["grpc"]}
    service = find(found, "Service", "fraud-detection-router")
    assert "clusterIP" not in service["spec"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (port, port) for name, port in ports.items()
    }


def test_a_graph_without_workers_is_a_router_alone():
    found = objects(served_k8s.local, "served_k8s:local")
    assert [(o["kind"], o["metadata"]["name"]) for o in found] == [
        ("Deployment", "local-router"),
        ("Service", "local-router"),
    ]
    assert "--remote" not in container(found[0])["args"]


def test_the_namespace_is_set_everywhere():
    assert {o["metadata"]["namespace"] for o in objects(namespace="ml")} == {"ml"}
    assert {o["metadata"]["namespace"] for o in objects()} == {"default"}


def test_tls_and_token_secrets_are_mounted_and_named_in_the_arguments():
    found = objects(tls_secret="sg-tls", token_secret="sg-tokens")
    router_deployment = find(found, "Deployment", "fraud-detection-router")
    router = container(router_deployment)
    tls = "/etc/servegraph/tls"
    assert (
        flag(router["args"], "--tls-cert") == f"{tls}/tls.crt" and flag(router["args"], "--tls-key") == f"{tls}/tls.key"
    )
    assert "--tls-client-ca" not in router["args"]  # clients need no certificate unless asked
    assert flag(router["args"], "--worker-tls-ca") == f"{tls}/ca.crt"
    assert flag(router["args"], "--worker-tls-cert") == f"{tls}/tls.crt"
    assert flag(router["args"], "--worker-tls-key") == f"{tls}/tls.key"
    assert flag(router["args"], "--auth-token-file") == "/etc/servegraph/auth/tokens"
    volumes = {v["name"]: v["secret"] for v in router_deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {
        "tls": {"secretName": "sg-tls"},
        "auth-token": {"secretName": "sg-tokens", "items": [{"key": "tokens", "path": "tokens"}]},
    }
    assert {m["name"]: m["mountPath"] for m in router["volumeMounts"]} == {
        "tls": tls,
        "auth-token": "/etc/servegraph/auth",
    }
    for deployment in workers(found):
        worker = container(deployment)
        assert flag(worker["args"], "--tls-client-ca") == f"{tls}/ca.crt", "workers accept only the router"
        assert "--auth-token-file" not in worker["args"]
        assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["tls"]
        assert "grpc" not in worker["readinessProbe"], "the kubelet's gRPC probe cannot speak TLS"
        assert worker["readinessProbe"]["exec"]["command"][:2] == ["python", "-c"]
    client_auth = container(
        find(objects(tls_secret="sg-tls", tls_client_auth=True), "Deployment", "fraud-detection-router")
    )
    assert flag(client_auth["args"], "--tls-client-ca") == f"{tls}/ca.crt"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_tls_probe_checks_health_with_the_pods_certificate(tmp_path):
    """The exec probe, run for real against a mutual-TLS health server like a worker's."""
    host = "g-worker-m.ml.svc.cluster.local"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=ca", cwd=tmp_path)
    _openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={host}", cwd=tmp_path)
    (tmp_path / "san").write_text(f"subjectAltName=DNS:{host}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "san",
        cwd=tmp_path,
    )
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    server = grpc.server(ThreadPoolExecutor(2))
    status = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    credentials = grpc.ssl_server_credentials([(read("tls.key"), read("tls.crt"))], read("ca.crt"), True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        probe = [sys.executable, "-c", TLS_PROBE.format(dir=tmp_path, port=port, host=host)]
        status.set("", health_pb2.HealthCheckResponse.SERVING)
        assert subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
        status.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert subprocess.run(probe, capture_output=True, timeout=60).returncode != 0
    finally:
        server.stop(None)


def test_names_become_dns_labels():
    assert dns_label("Fraud_Detection", "worker", "big_model") == "fraud-detection-worker-big-model"
    assert dns_label("1st graph") == "sg-1st-graph"
    long_a, long_b = dns_label("g", "x" * 80 + "a"), dns_label("g", "x" * 80 + "b")
    assert len(long_a) == len(long_b) == 63 and long_a != long_b
    assert re.fullmatch(r"[a-z][-a-z0-9]*[a-z0-9]", long_a)


def test_names_that_collide_are_refused():
    with pytest.raises(GraphError, match="worker names must differ"):
        objects(served_k8s.clash, "served_k8s:clash")


def test_a_file_path_is_refused_since_pods_import_by_module():
    with pytest.raises(GraphError, match="MODULE:ATTR"):
        objects(target="tests/served_k8s.py:fraud")


def test_the_command_prints_the_manifests():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "servegraph.cli",
            "manifests",
            TARGET,
            "--image",
            "registry.example/servegraph:1",
            "--namespace",
            "ml",
        ],
        cwd=TESTS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    printed = list(yaml.safe_load_all(result.stdout))
    assert printed == objects(namespace="ml")
    assert {o["spec"]["template"]["spec"]["containers"][0]["image"] for o in printed if o["kind"] == "Deployment"} == {
        "registry.example/servegraph:1"
    }


def test_the_dockerfile_matches_the_manifests_and_the_makefile():
    """The image exposes the ports the manifests use and pins the torch the Makefile installs."""
    dockerfile = (TESTS_DIR.parent / "Dockerfile").read_text()
    (exposed,) = re.findall(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)
    assert {int(port) for port in exposed.split()} == {ROUTER_PORT, WORKER_PORT, METRICS_PORT}
    (torch,) = re.findall(r"pip install -q torch==([\d.]+)", (TESTS_DIR.parent / "Makefile").read_text())
    assert f"ARG TORCH_VERSION={torch}\n" in dockerfile
    assert 'ENTRYPOINT ["servegraph"]' in dockerfile


def test_client_auth_without_a_tls_secret_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "servegraph.cli", "manifests", TARGET, "--image", "i", "--tls-client-auth"],
        cwd=TESTS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--tls-client-auth needs --tls-secret" in result.stderr


def test_the_commands_the_pods_run_are_what_the_cli_accepts():
    """The pods' arguments parse, every router --remote names a worker of the graph (the pool's merged),
    and each worker pod's --model or --pool hosts what the router expects of it."""
    from servegraph.cli import parser
    from servegraph.hosting.endpoints import POOL
    from servegraph.hosting.hub import ModelHub

    found = objects(tls_secret="sg-tls")
    router = parser().parse_args(container(find(found, "Deployment", "fraud-detection-router"))["args"])
    remotes = {name: targets for name, targets in router.remote}
    hub = ModelHub(served_k8s.fraud, remotes)
    assert sorted(hub.remotes) == sorted(["big_model", "llm", POOL])
    assert router.worker_tls_ca and router.worker_tls_cert and router.worker_tls_key
    for deployment in workers(found):
        args = parser().parse_args(container(deployment)["args"])
        name, _ = hub.endpoints.worker_of(args.model) if args.model else (POOL, None)
        host = f"{deployment['metadata']['name']}.default.svc.cluster.local:{WORKER_PORT}"
        assert hub.remotes[name] == [f"dns:///{host}"]
        assert (args.host, args.port, args.tls_client_ca) == ("0.0.0.0", WORKER_PORT, "/etc/servegraph/tls/ca.crt")
