"""When the outbox tries a delivery again, and when it gives up.

The delay after the n-th failure of an entry is drawn uniformly from
``[0, min(max_delay, initial_delay * multiplier ** (n - 1))]`` ("full jitter",
as in the AWS architecture blog's "Exponential Backoff and Jitter"), and is
never shorter than the wait a receiver asked for: HTTP ``Retry-After``,
Telegram's ``parameters.retry_after``, Discord's ``retry_after``. Full jitter
spreads the retries of many agents that lost the same receiver at once, so the
receiver does not get them back in one wave when it recovers.
"""

from __future__ import annotations

import dataclasses
import math
import random

from .errors import SinkError

__all__ = [
    "SECONDS",
    "MINUTES",
    "HOURS",
    "DAYS",
    "RetryPolicy",
    "retry_delay",
    "describe_error",
]

SECONDS = 1.0
MINUTES = 60 * SECONDS
HOURS = 60 * MINUTES
DAYS = 24 * HOURS


def is_number(value: object) -> bool:
    """Return whether ``value`` is a finite int or float (bool excluded)."""
    # bool is an int subclass, but True is no duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When the outbox retries a failed delivery, and when it gives up."""

    # Upper bound of the first retry delay, in seconds. Lower retries a brief
    # outage sooner; higher sends less traffic to a receiver that is struggling.
    initial_delay: float = 1 * SECONDS
    # Upper bound of any retry delay, in seconds, unless the receiver requests a
    # longer one. Higher spares a receiver that is down; lower notices recovery
    # sooner.
    max_delay: float = 5 * MINUTES
    # Factor by which the delay bound grows after each failure of an entry.
    multiplier: float = 2.0
    # Age in seconds after which an undelivered entry becomes a dead letter. An
    # alarm a day late rarely helps anyone, and the entries behind it wait. An
    # entry whose next retry would come after this age is dead-lettered at once.
    max_age: float = 24 * HOURS
    # Deadline of one attempt, in seconds. A receiver that hangs longer fails the
    # attempt, which is then retried.
    attempt_timeout: float = 30 * SECONDS

    def __post_init__(self) -> None:
        for field in ("initial_delay", "max_delay", "max_age", "attempt_timeout"):
            value = getattr(self, field)
            if not (is_number(value) and value > 0):
                raise ValueError(f"invalid {field} {value!r}, expected seconds > 0")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"invalid max_delay {self.max_delay!r}, expected at least "
                f"initial_delay {self.initial_delay!r}"
            )
        multiplier = self.multiplier
        if not (is_number(multiplier) and multiplier >= 1):
            raise ValueError(f"invalid multiplier {multiplier!r}, expected at least 1")

    def delay_bound(self, failures: int) -> float:
        """Return the maximum delay in seconds after ``failures`` failures."""
        try:
            bound = self.initial_delay * self.multiplier ** (failures - 1)
        except OverflowError:
            return self.max_delay
        return min(bound, self.max_delay)


def retry_delay(
    policy: RetryPolicy,
    failures: int,
    retry_after: float | None,
    rng: random.Random,
) -> float:
    """Return the seconds to wait after the ``failures``-th failure of an entry.

    Args:
        retry_after: the wait the receiver asked for, or None. An infinite or
            negative hint from a buggy receiver is ignored.
    """
    delay = rng.uniform(0.0, policy.delay_bound(failures))
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        delay = max(delay, retry_after)
    return delay


def describe_error(exc: BaseException) -> str:
    """Return the text of a failed attempt, for logs and dead letters."""
    # Sink errors carry messages written for operators; others need their type.
    if isinstance(exc, SinkError):
        return str(exc) or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
