"""Self-signed TLS certificates for the servers the tests start on loopback."""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .helpers import require_binary


@dataclass(frozen=True)
class Certificate:
    certificate: Path  # PEM
    key: Path  # PEM, unencrypted


def self_signed_certificate(directory: Path) -> Certificate:
    """A certificate for localhost and 127.0.0.1, with its key, written into ``directory``: the
    kind `make cert` makes for local use (a P-256 key: quick to make and to handshake)."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate = Certificate(directory / "fullchain.pem", directory / "privkey.pem")
    subprocess.run(
        [
            require_binary("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(certificate.key),
            "-out",
            str(certificate.certificate),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certificate
