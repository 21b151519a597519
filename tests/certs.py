"""Certificates for the TLS tests, made on the fly with the `openssl` command (EC keys: fast)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certs:
    """A CA, a server certificate (for 127.0.0.1 and localhost unless told), a client certificate, all
    signed by the CA; and an unrelated CA with a client certificate of its own."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder,
        *["req", "-x509", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2"],
        *["-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE"],
        *["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    )


def _signed(folder: Path, name: str, ca: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(folder, "req", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(
        folder,
        *["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial", "0x1001"],
        *["-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext"],
    )


def make_certs(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Certs:
    """The certificates; the server's names `hosts` (IP addresses or DNS names)."""
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    names = ",".join(f"IP:{host}" if host.replace(".", "").isdigit() else f"DNS:{host}" for host in hosts)
    _signed(folder, "server", "ca", f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
    _signed(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _signed(folder, "stranger", "other-ca", "extendedKeyUsage=clientAuth\n")
    return Certs(
        *(folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")),
        *(folder / name for name in ("other-ca.pem", "stranger.pem", "stranger.key")),
    )
