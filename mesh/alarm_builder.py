"""Turn a report of the protocol core into the alarm record receivers get.

The core reports an incident with its kind, observers and monotonic times.
This module turns that into what people read: the subject a team routes on,
the cluster, the severity and a one-line summary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .alarm import Alarm, Severity, Status
from .incidents import Kind, Report

__all__ = ["AlarmBuilder"]


class AlarmBuilder:
    def __init__(
        self,
        *,
        reporter: str,
        cluster: str,
        checks: Mapping[str, Any],
        wall_time_of: Callable[[float], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.reporter = reporter
        # This agent's cluster, the cluster of its local checks.
        self.cluster = cluster
        # Configured checks by name; each has ``subject`` and ``severity``.
        self.checks = checks
        # Map a monotonic time of the core to wall-clock Unix seconds.
        self._wall_time_of = wall_time_of
        self._wall_clock = wall_clock

    def build(self, report: Report, *, cluster_answers: bool | None = None) -> Alarm:
        """Return the alarm for ``report``.

        Args:
            cluster_answers: for a member-down report, whether the member's
                cluster still answered on its external endpoint; None when no
                endpoint is configured.
        """
        firing = report.status == "firing"
        started_at = self._wall_time_of(report.started)
        ended_at = None if report.ended is None else self._wall_time_of(report.ended)
        subject, cluster, severity, summary = self._describe(report, cluster_answers)
        if not firing:
            duration = (ended_at or started_at) - started_at
            if report.kind is Kind.MEMBER_DOWN and not report.left:
                summary = f"member {report.subject} is alive again after {duration:.0f}s down"
            else:
                summary = f"resolved after {duration:.0f}s: {summary}"
        return Alarm(
            incident=report.incident,
            status=Status.FIRING if firing else Status.RESOLVED,
            severity=severity,
            subject=subject,
            cluster=cluster,
            reporter=self.reporter,
            observers=report.observers,
            started_at=started_at,
            sent_at=self._wall_clock(),
            ended_at=ended_at,
            summary=summary,
        )

    def _describe(
        self, report: Report, cluster_answers: bool | None
    ) -> tuple[str, str, Severity, str]:
        """Return the subject, cluster, severity and summary of a report."""
        observers = ", ".join(report.observers) or "no other member"
        match report.kind:
            case Kind.MEMBER_DOWN:
                name = report.subject
                if report.left:
                    summary = f"member {name} left the mesh after being declared dead"
                elif cluster_answers:
                    # The agent is gone but its cluster serves: less urgent
                    # than a whole cluster out of reach.
                    summary = (
                        f"agent {name} is down but its cluster still answers on its "
                        f"external endpoint; observed by {observers}"
                    )
                    return f"member/{name}", name, Severity.WARNING, summary
                elif cluster_answers is False:
                    summary = (
                        f"cluster {name} is unreachable: its agent stopped answering "
                        f"probes and its external endpoint failed; observed by {observers}"
                    )
                else:
                    summary = (
                        f"member {name} stopped answering probes and was declared "
                        f"dead; observed by {observers}"
                    )
                return f"member/{name}", name, Severity.CRITICAL, summary
            case Kind.GROUP:
                summary = f"{report.detail}; observed by {observers}"
                return f"members/{report.subject}", report.subject, Severity.CRITICAL, summary
            case Kind.EGRESS:
                member, _, check = report.subject.partition("/")
                summary = f"cluster {member} cannot reach its targets: {report.detail}"
                return f"cluster/{member}", member, Severity.WARNING, summary
            case Kind.CHECK | Kind.SHARED_CHECK:
                spec = self.checks.get(report.subject)
                subject = spec.subject if spec is not None else f"check/{report.subject}"
                severity = Severity(spec.severity.value) if spec is not None else Severity.CRITICAL
                shared = report.kind is Kind.SHARED_CHECK
                cluster = "shared" if shared else self.cluster
                # A resolved alarm's detail is the last result, which passed.
                state = "passing again" if report.status == "resolved" else "failing"
                summary = f"check {report.subject} {state}: {report.detail}"
                return subject, cluster, severity, summary
        raise ValueError(f"unknown incident kind {report.kind!r}")  # pragma: no cover
