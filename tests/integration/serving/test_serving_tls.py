"""``crmbet serve`` as a process, with TLS from a configured certificate and key."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serving_support import Trained, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SRC = Path(__file__).resolve().parents[3] / "src"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_serve_over_tls(trained: Trained, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "CRMBET_HOME": str(trained.settings.home),
        "CRMBET_TLS_CERT_PATH": str(cert),
        "CRMBET_TLS_KEY_PATH": str(key),
        "CRMBET_REGISTRY_POLL_SECONDS": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "crmbet", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        body = _wait_ready(f"https://127.0.0.1:{port}", context, process)
        assert body["model_version"] == trained.champion
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=5)
    finally:
        process.terminate()
        process.wait(timeout=20)
        process.stderr.close()


def _wait_ready(url: str, context: ssl.SSLContext, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"crmbet serve exited: {process.stderr.read().decode()[-2000:]}"
            )
        try:
            response = httpx.post(
                f"{url}/v1/predict", json={"player_id": "tls-player"}, verify=context
            )
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"crmbet serve did not answer on {url} within 90 s")
