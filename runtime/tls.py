"""TLS credentials from PEM files, for every side of servegraph: the router, a worker, the clients.

One place turns file paths into gRPC credentials, so that a missing or wrong file fails the same way
everywhere: a `CredentialsError` naming the file, before any port opens or any connection is tried.
Imports only grpc: a worker or a client loads nothing of the router by using it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import grpc

PathLike = str | os.PathLike[str]


class CredentialsError(ValueError):
    """A certificate, key or token file that cannot be used; the message names the file."""


def read_pem(path: PathLike, what: str) -> bytes:
    """The bytes of a PEM file; `what` ("certificate", "private key", ...) goes into the error."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CredentialsError(f"cannot read {what} file {os.fspath(path)}: {error.strerror or error}") from None
    if b"-----BEGIN " not in data:
        raise CredentialsError(f"{what} file {os.fspath(path)} is not PEM (no '-----BEGIN' line)")
    return data


def _check(cert: PathLike | None, key: PathLike | None, ca: PathLike | None) -> None:
    """Loads the files through Python's ssl (OpenSSL) first: gRPC takes broken or mismatched ones
    silently and fails later, as a port that will not open or a handshake that fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key, password=b"")  # never a password prompt: gRPC takes no encrypted key
        except ssl.SSLError as error:
            reason = (error.reason or "").replace("_", " ").lower() or "unreadable, or the key is encrypted"
            raise CredentialsError(f"TLS certificate {cert} and private key {key} cannot be used: {reason}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError:
            raise CredentialsError(f"TLS CA file {ca} holds no valid certificate") from None


def server_credentials(cert: PathLike, key: PathLike, client_ca: PathLike | None = None) -> grpc.ServerCredentials:
    """A server's TLS; with `client_ca`, mutual TLS: only clients with a certificate it signed get in."""
    credentials = grpc.ssl_server_credentials(
        [(read_pem(key, "TLS private key"), read_pem(cert, "TLS certificate"))],
        root_certificates=read_pem(client_ca, "TLS client CA") if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )
    _check(cert, key, client_ca)
    return credentials


def channel_credentials(
    ca: PathLike | None, cert: PathLike | None = None, key: PathLike | None = None
) -> grpc.ChannelCredentials:
    """A client's TLS: trust `ca` (None: the system's roots); `cert` and `key` for mutual TLS."""
    if (cert is None) != (key is None):
        raise CredentialsError("a TLS client certificate needs its private key, and a key its certificate")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "TLS CA") if ca is not None else None,
        private_key=read_pem(key, "TLS private key") if key is not None else None,
        certificate_chain=read_pem(cert, "TLS certificate") if cert is not None else None,
    )
    _check(cert, key, ca)
    return credentials
