"""Running checks: one run under a deadline, and every check on its interval.

:func:`run_check` catches every :class:`Exception`, so only
:class:`trio.Cancelled` (and other BaseExceptions) leave it. A timeout, a
refused connection, a TLS failure or an unreadable token file all become a
failed :class:`Observation` with a reason. :func:`run_checks_forever` runs every
check on its own interval and hands each observation to a callback.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
from collections.abc import Callable, Iterable

import httpx
import trio

from .client import CheckFileError, open_check_client
from .config import (
    ApiServerCheck,
    CheckConfig,
    DnsCheck,
    HttpCheck,
    NodesCheck,
    TcpCheck,
)
from .http import run_http_check
from .kubernetes import InvalidResponse, run_apiserver_check, run_nodes_check
from .net import run_dns_check, run_tcp_check
from .observation import CheckReason, Observation

__all__ = ["run_check", "run_checks_forever", "describe_error"]

logger = logging.getLogger(__name__)

# The first run of each check starts after a random share of its interval, up
# to this share, so that checks (and members) do not all fire at once.
INITIAL_OFFSET_SHARE = 0.1


async def run_check(
    check: CheckConfig, *, client: httpx.AsyncClient | None = None
) -> Observation:
    """Run ``check`` once, within its timeout.

    Args:
        check: the check to run.
        client: the client for HTTP requests. When None, a client with the
            check's TLS settings (:func:`open_check_client`) is opened for this
            run. A given client is used as it is, so its TLS settings must suit
            the check. TCP and DNS checks ignore it.

    Returns:
        The observation. Every failure, the deadline included, becomes a failed
        observation with a reason.
    """
    try:
        with trio.fail_after(check.timeout):
            return await _dispatch(check, client)
    except Exception as exc:
        reason, detail = describe_error(exc)
        if reason is CheckReason.TIMEOUT:
            detail = f"no result within {check.timeout:g}s"
        if reason is CheckReason.ERROR:
            logger.error(
                "check raised an unexpected error check=%s", check.name, exc_info=True
            )
        return Observation(
            check=check.name,
            ok=False,
            summary=f"{_describe_action(check)} failed: {detail}",
            latency=None,
            reason=reason,
        )


async def run_checks_forever(
    checks: Iterable[CheckConfig],
    on_observation: Callable[[Observation], None],
    *,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every check on its own interval until cancelled.

    Each check gets its own task in one nursery. Its first run starts after a
    random offset of up to a tenth of its interval, and later runs start one
    interval after the previous start. Returns at once when ``checks`` is empty.

    Args:
        checks: the checks to run.
        on_observation: called with each observation, in the check's task. It
            must not block. An exception from it ends every check's task and
            propagates.
        rng: source of the initial offsets, for reproducible tests.
        task_status: started (with None) once every check's task is scheduled.
    """
    rng = rng or random.Random()
    async with trio.open_nursery() as nursery:
        for check in checks:
            offset = rng.uniform(0, check.interval * INITIAL_OFFSET_SHARE)
            nursery.start_soon(_run_on_interval, check, on_observation, offset)
        task_status.started()


async def _run_on_interval(
    check: CheckConfig, on_observation: Callable[[Observation], None], offset: float
) -> None:
    start = trio.current_time() + offset
    previous: Observation | None = None
    while True:
        await trio.sleep_until(start)
        observation = await run_check(check)
        _log_observation(check, previous, observation)
        previous = observation
        on_observation(observation)
        # Fixed rate; a run never outlasts the interval since timeout < interval.
        start = max(start + check.interval, trio.current_time())


def _log_observation(
    check: CheckConfig, previous: Observation | None, observation: Observation
) -> None:
    # Only a change of reason is logged above DEBUG, so that a check failing
    # every 30 s the same way writes one warning, not one per run.
    changed = previous is None or previous.reason != observation.reason
    if changed and not observation.ok:
        logger.warning(
            "check failing check=%s reason=%s summary=%s",
            check.name,
            observation.reason,
            observation.summary,
        )
    elif changed and previous is not None:
        logger.info(
            "check passing check=%s summary=%s", check.name, observation.summary
        )
    else:
        logger.debug(
            "check ran check=%s reason=%s summary=%s",
            check.name,
            observation.reason,
            observation.summary,
        )


async def _dispatch(
    check: CheckConfig, client: httpx.AsyncClient | None
) -> Observation:
    if isinstance(check, TcpCheck):
        return await run_tcp_check(check)
    if isinstance(check, DnsCheck):
        return await run_dns_check(check)
    if client is not None:
        return await _run_http_kind(check, client)
    async with open_check_client(check) as own_client:
        return await _run_http_kind(check, own_client)


async def _run_http_kind(check: CheckConfig, client: httpx.AsyncClient) -> Observation:
    if isinstance(check, HttpCheck):
        return await run_http_check(check, client)
    if isinstance(check, ApiServerCheck):
        return await run_apiserver_check(check, client)
    if isinstance(check, NodesCheck):
        return await run_nodes_check(check, client)
    raise TypeError(f"unsupported check type {type(check).__name__}")


def _describe_action(check: CheckConfig) -> str:
    if isinstance(check, HttpCheck):
        return f"{check.method} {check.subject}"
    if isinstance(check, ApiServerCheck):
        return f"API server {check.source.server}"
    if isinstance(check, NodesCheck):
        return f"listing nodes at {check.source.server}"
    if isinstance(check, TcpCheck):
        return f"TCP connect to {check.address}"
    return f"DNS lookup of {check.host}"


def describe_error(exc: Exception) -> tuple[CheckReason, str]:
    """Map an exception raised by a check to a reason and a short detail.

    The exception's causes are searched too, because httpx and trio wrap the
    socket and SSL errors: the most specific one found decides.
    """
    chain = _exception_chain(exc)
    if any(isinstance(e, (trio.TooSlowError, httpx.TimeoutException)) for e in chain):
        return CheckReason.TIMEOUT, "timed out"
    if isinstance(exc, CheckFileError):
        return CheckReason.CONFIG_ERROR, str(exc)
    if isinstance(exc, (InvalidResponse, httpx.DecodingError)):
        return CheckReason.INVALID_RESPONSE, str(exc)

    for error in chain:
        if isinstance(error, ssl.SSLCertVerificationError):
            detail = f"certificate verify failed: {error.verify_message}"
            return CheckReason.TLS_ERROR, detail
    for error in chain:
        if isinstance(error, ssl.SSLError):
            return CheckReason.TLS_ERROR, f"TLS handshake failed: {_ssl_text(error)}"
    for error in chain:
        if isinstance(error, socket.gaierror):
            return CheckReason.DNS_FAILED, f"name not resolved: {error.strerror}"
    if isinstance(exc, (OSError, httpx.TransportError)):
        # os.strerror, because trio puts the address into each attempt's strerror.
        errnos = [e.errno for e in chain if isinstance(e, OSError) and e.errno]
        detail = os.strerror(errnos[0]) if errnos else str(exc)
        return CheckReason.CONNECT_FAILED, detail
    return CheckReason.ERROR, f"{type(exc).__name__}: {exc}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """Return ``exc``, its causes and contexts, and members of exception groups."""
    found: list[BaseException] = []
    pending = [exc]
    while pending:
        error = pending.pop(0)
        if error in found:
            continue
        found.append(error)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return found


def _ssl_text(error: ssl.SSLError) -> str:
    return (error.reason or str(error)).lower().replace("_", " ")
