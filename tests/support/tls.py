"""A certificate authority made for one test run, so the local index can serve HTTPS.

Clients trust it the way a user trusts a corporate CA: SSL_CERT_FILE names the CA's certificate
(uv and httpx both read it; tests/test_tls.py checks that each really does).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

# What the index binds and what clients dial: the certificate names both.
HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a run's CA and of the server certificate it issued."""

    ca: Path  # the CA certificate: what SSL_CERT_FILE points at
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key

    @classmethod
    def in_folder(cls, folder: Path) -> TlsFiles:
        """The files make_tls wrote into folder."""
        folder = Path(folder)
        return cls(folder / "ca.pem", folder / "server.pem", folder / "server.key")

    def server_context(self) -> ssl.SSLContext:
        """A server-side context with the certificate, HTTP/1.1 only (like the test server)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def env(self) -> dict[str, str]:
        """The environment a client needs to trust this CA (and only it)."""
        return {"SSL_CERT_FILE": str(self.ca)}


def make_tls(folder: Path) -> TlsFiles:
    """Make a new CA and a certificate for 127.0.0.1 and localhost; write both under folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles.in_folder(folder)
    ca = trustme.CA(organization_name="warmd test CA")
    leaf = ca.issue_cert(*HOSTS)
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.private_key_pem.write_to_path(str(files.key))
    with open(files.cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    return files
