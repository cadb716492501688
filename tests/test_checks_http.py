"""The http check against local HTTP and HTTPS servers on loopback."""

from __future__ import annotations

import datetime
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from certificates import CertificateAuthority
from kube_api import serve_https
from mesh.checks.config import HttpCheck, parse_check_config
from mesh.checks.http import MAX_BODY_BYTES
from mesh.checks.observation import CheckReason, Observation
from mesh.checks.runner import run_check
from receivers import serve_receiver

HEADER_SECRET = "Bearer shop-api-secret-0123456789"


class ShopApp:
    """An ASGI site whose response the test sets: status, body, delay, Location."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"<html><title>Shop</title>open</html>"
        # Seconds to wait before responding.
        self.delay = 0.0
        self.location: str | None = None
        # Headers of every request, lower-case names.
        self.requests: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"method": scope["method"], **headers})
        if self.delay:
            await trio.sleep(self.delay)
        response_headers = [(b"content-type", b"text/html")]
        if self.location:
            response_headers.append((b"location", self.location.encode()))
        start = {
            "type": "http.response.start",
            "status": self.status,
            "headers": response_headers,
        }
        await send(start)
        await send({"type": "http.response.body", "body": self.body})


def make_check(url: str, **keys: Any) -> HttpCheck:
    raw = {"name": "shop", "kind": "http", "url": url, "timeout": 5, **keys}
    return parse_check_config(0, raw)


def assert_failed(observation: Observation, reason: CheckReason) -> None:
    assert observation.ok is False, observation.summary
    assert observation.reason == reason, observation.summary


@pytest.fixture
async def shop() -> AsyncIterator[tuple[ShopApp, str]]:
    app = ShopApp()
    async with serve_receiver(app) as base_url:
        yield app, base_url


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def ca_file(tmp_path: Path, ca: CertificateAuthority) -> Path:
    return ca.write(tmp_path)


async def serve_shop_tls(
    app: ShopApp, ca: CertificateAuthority, folder: Path, valid_days: float
) -> Any:
    cert_file, key_file = ca.issue_server(
        valid_for=datetime.timedelta(days=valid_days)
    ).write(folder, f"shop-{valid_days}")
    return serve_https(app, cert_file, key_file)


# Status.


async def test_ok_status(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    observation = await run_check(make_check(base_url + "/"))

    assert observation.ok, observation.summary
    assert observation.reason == CheckReason.OK
    assert observation.summary.startswith(f"GET {base_url}/ returned 200 in ")
    assert observation.latency is not None and observation.latency > 0
    assert app.requests[0]["method"] == "GET"


async def test_error_status(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.status = 503
    observation = await run_check(make_check(base_url + "/cart?session=s3cr3t"))

    assert_failed(observation, CheckReason.STATUS)
    assert observation.summary.startswith(f"GET {base_url}/cart returned 503 in ")
    assert "s3cr3t" not in observation.summary
    assert observation.latency is not None


async def test_expected_error_status(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.status = 503
    observation = await run_check(make_check(base_url + "/", expect_status=[503]))

    assert observation.ok, observation.summary


async def test_redirect_not_followed(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.status = 302
    app.location = "http://127.0.0.1:9/elsewhere"
    default = await run_check(make_check(base_url + "/"))
    strict = await run_check(make_check(base_url + "/", expect_status=200))

    assert default.ok, default.summary
    assert_failed(strict, CheckReason.STATUS)
    assert len(app.requests) == 2


async def test_head_method(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    observation = await run_check(make_check(base_url + "/", method="HEAD"))

    assert observation.ok, observation.summary
    assert observation.summary.startswith(f"HEAD {base_url}/ returned 200")
    assert app.requests[0]["method"] == "HEAD"


async def test_headers_sent_but_never_shown(
    shop: tuple[ShopApp, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, base_url = shop
    app.status = 500
    check = make_check(base_url + "/", headers={"Authorization": HEADER_SECRET})
    observation = await run_check(check)

    assert app.requests[0]["authorization"] == HEADER_SECRET
    assert "shop-api-secret" not in observation.summary
    assert "shop-api-secret" not in repr(check)
    assert "shop-api-secret" not in caplog.text


# Body and latency.


async def test_body_match(shop: tuple[ShopApp, str]) -> None:
    _, base_url = shop
    observation = await run_check(make_check(base_url + "/", body_match="<title>Shop"))

    assert observation.ok, observation.summary


async def test_body_mismatch(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.body = b"<html>maintenance</html>"
    observation = await run_check(make_check(base_url + "/", body_match="open$|open<"))

    assert_failed(observation, CheckReason.BODY_MISMATCH)
    assert observation.summary.endswith(", body does not match 'open$|open<'")


async def test_body_match_reads_first_mebibyte_only(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.body = b"x" * MAX_BODY_BYTES + b"MARKER"
    observation = await run_check(make_check(base_url + "/", body_match="MARKER"))

    assert_failed(observation, CheckReason.BODY_MISMATCH)


async def test_slow_response(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.delay = 0.15
    observation = await run_check(make_check(base_url + "/", max_latency=0.05))

    assert_failed(observation, CheckReason.SLOW)
    assert observation.latency is not None and observation.latency >= 0.15
    assert observation.summary.endswith(", slower than 0.05s")


async def test_fast_enough_response(shop: tuple[ShopApp, str]) -> None:
    _, base_url = shop
    observation = await run_check(make_check(base_url + "/", max_latency=5))

    assert observation.ok, observation.summary


async def test_status_reported_before_body(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.status = 404
    app.body = b"not found"
    observation = await run_check(make_check(base_url + "/", body_match="open"))

    assert_failed(observation, CheckReason.STATUS)


# TLS.


async def test_certificate_expiring_soon(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    app = ShopApp()
    async with await serve_shop_tls(app, ca, tmp_path, valid_days=5) as base_url:
        check = make_check(base_url + "/", ca_file=str(ca_file), tls_min_days=14)
        observation = await run_check(check)

    assert_failed(observation, CheckReason.TLS_EXPIRING)
    assert ", certificate expires in 5.0 days (minimum 14)" in observation.summary


async def test_certificate_valid_long_enough(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    app = ShopApp()
    async with await serve_shop_tls(app, ca, tmp_path, valid_days=5) as base_url:
        check = make_check(base_url + "/", ca_file=str(ca_file), tls_min_days=3)
        observation = await run_check(check)

    assert observation.ok, observation.summary
    assert observation.summary.endswith(", certificate expires in 5.0 days")


async def test_certificate_expired(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    app = ShopApp()
    async with await serve_shop_tls(app, ca, tmp_path, valid_days=-2) as base_url:
        check = make_check(base_url + "/", ca_file=str(ca_file), tls_min_days=14)
        observation = await run_check(check)

    assert_failed(observation, CheckReason.TLS_ERROR)
    assert "certificate verify failed: certificate has expired" in observation.summary
    assert app.requests == []


async def test_untrusted_certificate(tmp_path: Path, ca: CertificateAuthority) -> None:
    app = ShopApp()
    other_ca_file = CertificateAuthority("other CA").write(tmp_path, "other.crt")
    async with await serve_shop_tls(app, ca, tmp_path, valid_days=90) as base_url:
        trusted_elsewhere = await run_check(make_check(base_url + "/"))
        wrong_ca_check = make_check(base_url + "/", ca_file=str(other_ca_file))
        wrong_ca = await run_check(wrong_ca_check)

    assert_failed(trusted_elsewhere, CheckReason.TLS_ERROR)
    assert_failed(wrong_ca, CheckReason.TLS_ERROR)
    assert "unable to get local issuer certificate" in wrong_ca.summary


async def test_certificate_for_other_host(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    app = ShopApp()
    cert_file, key_file = ca.issue_server(["shop.example"]).write(tmp_path, "shop")
    async with serve_https(app, cert_file, key_file) as base_url:
        observation = await run_check(make_check(base_url + "/", ca_file=str(ca_file)))

    assert_failed(observation, CheckReason.TLS_ERROR)
    assert "IP address mismatch" in observation.summary


# Connection failures.


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    observation = await run_check(make_check(f"http://127.0.0.1:{port}/"))

    assert_failed(observation, CheckReason.CONNECT_FAILED)
    assert observation.summary == (
        f"GET http://127.0.0.1:{port}/ failed: Connection refused"
    )


async def test_unresolvable_host() -> None:
    # RFC 6761 reserves .invalid: it never resolves.
    observation = await run_check(make_check("http://shop.invalid/"))

    assert_failed(observation, CheckReason.DNS_FAILED)
    assert observation.summary.startswith("GET http://shop.invalid/ failed: ")


@pytest.mark.slow
async def test_hanging_server_times_out(shop: tuple[ShopApp, str]) -> None:
    app, base_url = shop
    app.delay = 0.6
    observation = await run_check(make_check(base_url + "/", timeout=0.2))

    assert_failed(observation, CheckReason.TIMEOUT)
    assert observation.summary == f"GET {base_url}/ failed: no result within 0.2s"


async def test_given_client_is_used() -> None:
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(418)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        check = make_check("https://shop.example/")
        observation = await run_check(check, client=client)

    assert seen == ["https://shop.example/"]
    assert_failed(observation, CheckReason.STATUS)
