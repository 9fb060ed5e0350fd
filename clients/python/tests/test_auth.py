"""The SDK against a server with access control: an API key over TLS with a custom CA, a client
certificate (mTLS), and the typed errors for a missing key and another tenant's execution.

The certificates are made with the openssl command; the server is the real binary."""

from __future__ import annotations

import hashlib
import pathlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from comfy_reality import Client, ComfyRealityError

from conftest import Fake, Process, binary, clean_env, image_workflow, unique


@dataclass
class Secured:
    address: str
    ca: pathlib.Path
    alice_key: str
    bob_key: str
    cert: pathlib.Path
    key: pathlib.Path


def openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(root: pathlib.Path) -> None:
    """ca.pem, server.pem/key for localhost, alice.pem/key signed by the CA (CN alice.internal)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test ca", cwd=root)
    (root / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (root / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn, ext in (("server", "localhost", "server.ext"), ("alice", "alice.internal", "client.ext")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=root)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=root)


@pytest.fixture(scope="module")
def secured(fake: Fake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test certificates")
    root = tmp_path_factory.mktemp("secured")
    make_certificates(root)
    alice_key, bob_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)

    def sha(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    (root / "config.toml").write_text(
        f"""
[service]
data_dir = "{root / 'data'}"
[runtime]
enable_metrics = false
[scheduling]
probe_interval_seconds = 0.1
[[servers]]
url = "{fake.url}"
[auth]
mode = "api_key_or_mtls"
[[auth.principals]]
name = "alice"
tenant = "studio-a"
role = "submitter"
api_key_sha256 = ["{sha(alice_key)}"]
cert_names = ["alice.internal"]
[[auth.principals]]
name = "bob"
tenant = "studio-b"
role = "submitter"
api_key_sha256 = ["{sha(bob_key)}"]
[tls]
cert_file = "server.pem"
key_file = "server.key"
client_ca_file = "ca.pem"
"""
    )
    process = Process(
        [binary("COMFY_REALITY_BIN", "comfy-reality"), "--config", str(root / "config.toml"),
         "serve", "--listen", "127.0.0.1:0"],
        root / "stderr.log",
        clean_env(),
    )
    port = process.line("comfy-reality listening on ").rsplit(":", 1)[1]
    yield Secured(
        address=f"localhost:{port}",
        ca=root / "ca.pem",
        alice_key=alice_key,
        bob_key=bob_key,
        cert=root / "alice.pem",
        key=root / "alice.key",
    )
    process.stop()


def test_an_api_key_over_tls_with_a_custom_ca(secured: Secured) -> None:
    with Client(secured.address, api_key=secured.alice_key, tls=secured.ca, timeout=30) as alice:
        execution = alice.execute(image_workflow(unique("py-auth")))
        assert alice.wait(execution.id).artifacts
        # Bob, of another tenant, does not know the id.
        with Client(secured.address, api_key=secured.bob_key, tls=secured.ca.read_bytes(), timeout=30) as bob:
            with pytest.raises(ComfyRealityError) as refused:
                bob.get(execution.id)
            assert refused.value.code == grpc.StatusCode.NOT_FOUND
            assert all(e.id != execution.id for e in bob.list())


def test_a_client_certificate(secured: Secured) -> None:
    with Client(secured.address, tls=secured.ca, client_certificate=(secured.cert, secured.key), timeout=30) as alice:
        executions = [e.id for e in alice.list()]
        assert isinstance(executions, list)


def test_no_key_is_unauthenticated(secured: Secured) -> None:
    with Client(secured.address, tls=secured.ca, timeout=30) as anonymous:
        with pytest.raises(ComfyRealityError) as refused:
            [e.id for e in anonymous.list()]
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.reason == "AuthenticationError"
