"""TLS from a plain install: ``--listen ssl:...`` with a self-signed
certificate made here, publishing, reading and an SSE stream over it."""
from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers import ServerProcess, free_port
from tests.tokens import token_cli

TIMEOUT_S = 30


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def tls(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int, Path]]:
    workdir = tmp_path_factory.mktemp("tls")
    key, cert = self_signed(workdir)
    port = free_port()
    proc = ServerProcess(["--dsn", dsn, "--auth", "required",
                          "--listen", f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"],
                         workdir)
    proc.start()
    yield proc, port, cert
    proc.stop()


def connect(port: int, cert: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(cert))
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=TIMEOUT_S)


def test_publish_read_and_follow_over_tls_with_a_token(tls, dsn, channel_name):
    proc, port, cert = tls
    token = token_cli("create", f"tls-{channel_name}", "--scope", "publish:tls/*", "--scope", "read:tls/*",
                      dsn=dsn).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    follower = connect(port, cert)
    follower.request("GET", f"/events/tls/{channel_name}/stream", headers=auth)
    stream = follower.getresponse()
    assert stream.status == 200 and stream.getheader("Content-Type") == "text/event-stream"
    assert stream.readline() == b": connected\n"

    publisher = connect(port, cert)
    for n in range(3):
        publisher.request("POST", f"/events/tls/{channel_name}", body=json.dumps({"n": n}),
                          headers={**auth, "X-EVENT-ISSUER": "tls"})
        r = publisher.getresponse()
        assert r.status == 201, r.read()
        r.read()
    publisher.request("GET", f"/events/tls/{channel_name}", headers=auth)
    r = publisher.getresponse()
    assert [e["payload"]["n"] for e in json.loads(r.read())] == [0, 1, 2]
    publisher.request("GET", f"/events/tls/{channel_name}")
    r = publisher.getresponse()
    assert r.status == 401
    r.read()
    publisher.close()

    events = []
    while len(events) < 3:
        line = stream.readline()
        assert line, "the stream ended"
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    assert [e["payload"]["n"] for e in events] == [0, 1, 2]
    follower.close()


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls):
    proc, port, cert = tls
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(),
                                       timeout=TIMEOUT_S)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/health")
    conn.close()
    trusted = connect(port, cert)
    trusted.request("GET", "/health")
    assert trusted.getresponse().status == 200
    trusted.close()
