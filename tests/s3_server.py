"""A real S3 API server on loopback for the archive tests: moto's standalone server.

``python -m moto.server`` runs in its own process on 127.0.0.1 and a free port,
and speaks the S3 REST API over HTTP, so boto3 goes through its whole stack:
signing, the HTTP pool, retries, error parsing. Nothing is mocked in the test
process. The server keeps its buckets in memory, so a restart starts empty.

Import the fixtures into a test module to use them::

    from s3_server import aws_environment, s3_bucket, s3_server  # noqa: F401
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Credentials of the test server. moto accepts any; these only make boto3's
# chain stop at the environment, before it looks for profiles or a metadata
# service. The secret is also what tests look for in error messages.
ACCESS_KEY_ID = "AKIATESTALARMINATI01"
SECRET_ACCESS_KEY = "alarminati-test-secret-" + "s" * 17
REGION = "us-east-1"

# Seconds to wait for the server to answer after it starts.
START_TIMEOUT = 60.0

# AWS variables that could point boto3 elsewhere: a profile, another endpoint,
# a web identity, a developer's real credentials.
_FOREIGN_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_test_environment(scratch: Path) -> dict[str, str]:
    """Return the variables that point boto3 at test credentials and nothing else."""
    missing = str(scratch / "no-such-aws-file")
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        # Never ask a metadata service on a link-local address for credentials.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
    }


class S3Server:
    """A moto S3 server process on 127.0.0.1; :meth:`stop` ends it.

    Args:
        log_path: file that receives the server's output.
        port: the port to listen on; a free one by default. A restarted
            server keeps its port, so clients reconnect to the same URL.
    """

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers S3 requests."""
        assert self.process is None, "server already running"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1"]
        command += ["-p", str(self.port)]
        env = dict(os.environ, **aws_test_environment(self.log_path.parent))
        for name in _FOREIGN_AWS_VARIABLES:
            env.pop(name, None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                # moto's own API, not S3: it needs no signature.
                httpx.get(f"{self.url}/moto-api/data.json", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {START_TIMEOUT}s")

    def stop(self) -> None:
        """Stop the server; its buckets and objects are gone."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Start the server again on the same port, empty."""
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self):
        """Return a boto3 client of this server, for setting up and inspecting."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket, by default with a new random name, and return its name."""
        name = name or f"alarms-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One moto server for the whole session; tests use a bucket each."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_environment(monkeypatch, tmp_path) -> dict[str, str]:
    """Point boto3, in this process and in child processes, at test credentials."""
    for name in _FOREIGN_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    environment = aws_test_environment(tmp_path)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


@pytest.fixture
def s3_bucket(s3_server, aws_environment) -> str:
    """A new, empty bucket on the session's server."""
    return s3_server.create_bucket()
