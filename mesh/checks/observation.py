"""The outcome of one run of one local check.

This module is pure (no trio, no httpx), because the incident state machine in
the protocol core consumes observations and the gossip carries them.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["CheckReason", "Observation"]


class CheckReason(enum.StrEnum):
    """Short machine reason of an observation.

    Values go into gossip, logs and metric labels: only ever append new ones,
    never rename or reuse a value.
    """

    OK = "ok"
    # The check did not finish within its ``timeout``.
    TIMEOUT = "timeout"
    # The TCP connection was refused, reset or unreachable.
    CONNECT_FAILED = "connect_failed"
    # An HTTP status other than the expected ones.
    STATUS = "status"
    # The response body did not match ``body_match``.
    BODY_MISMATCH = "body_mismatch"
    # The response came later than ``max_latency``.
    SLOW = "slow"
    # The certificate expires within ``tls_min_days``.
    TLS_EXPIRING = "tls_expiring"
    # The TLS handshake failed, most often an untrusted or expired certificate.
    TLS_ERROR = "tls_error"
    # The host name did not resolve.
    DNS_FAILED = "dns_failed"
    # The host name resolved, but not to every address in ``expect``.
    DNS_MISMATCH = "dns_mismatch"
    # More nodes than ``max_not_ready`` are not Ready.
    NOT_READY = "not_ready"
    # The API server's /readyz or /livez reported a failing check.
    UNHEALTHY = "unhealthy"
    # The API server rejected the credentials (HTTP 401 or 403).
    UNAUTHORIZED = "unauthorized"
    # A response that does not follow the API, such as a NodeList that is not JSON.
    INVALID_RESPONSE = "invalid_response"
    # A local file of the check (token, CA, client certificate) cannot be used.
    CONFIG_ERROR = "config_error"
    # An unexpected error inside the check itself; the agent logs the traceback.
    ERROR = "error"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """The result of one run of one check on this member.

    It never contains a secret: tokens and header values stay out of the
    summary, which names URLs, hosts, nodes and status codes only.
    """

    # Name of the check, unique within one agent's configuration.
    check: str
    ok: bool
    # One line for people, e.g. "2 of 5 nodes NotReady: node-b, node-d".
    summary: str
    # Seconds the check took, or None when it failed before it could measure.
    latency: float | None
    # A CheckReason value; "ok" exactly when ``ok`` is true.
    reason: str

    def __post_init__(self) -> None:
        if self.ok != (self.reason == CheckReason.OK):
            raise ValueError(
                f"observation reason {self.reason!r} contradicts ok={self.ok!r}"
            )
