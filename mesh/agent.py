"""The agent runtime: drives the protocol core over HTTP with trio.

One nursery owns every task of an agent:

* the HTTP server (hypercorn's trio worker), whose ``POST /healthz`` handler
  feeds verified messages to the core and returns its answers in the response;
* a fixed pool of sender tasks that take outbound messages from a bounded
  channel and POST them; like UDP datagrams, a message that finds the channel
  full is dropped and counted, so a slow peer never stalls the protocol;
* the timer task, which sleeps until the core's earliest deadline or until an
  inbound message may have moved it, then ticks the core;
* the outbox, which delivers alarms to the sinks and the archive.

A stop request (SIGTERM) makes the agent leave gracefully: it tells every active
member that it left, under a short shielded deadline, and then cancels the rest.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from sinks.dispatch import Dispatcher
from sinks.outbox import Outbox
from sinks.routing import Router
from storage import open_archive
from storage.archive import public_key_key
from storage.destination import ArchiveDestination

from .alarm import SignedAlarm, open_alarm, seal_alarm
from .alarm_builder import AlarmBuilder
from .checks.observation import Observation
from .config import AgentConfig
from .errors import Reason, RejectedMessage
from .frame_client import FrameClient, PeerError, PeerTimeout
from .http_api import create_app
from .incidents import Decision, Kind, Report
from .keys import Keyring, SigningKey, encode_public_key
from .membership import State
from .messages import Ping, PingReq, decode_message, encode_message
from .metrics import (
    BAD_RECORD_SIGNATURE,
    SEND_QUEUE_FULL,
    SEND_REJECTED,
    SEND_UNREACHABLE,
    AgentMetrics,
    MeteredArchive,
    message_type,
)
from .node import Node, NodeEvents
from .record_store import RecordStore
from .swim import Outbound
from .wire import ReplayGuard, open_frame, seal

__all__ = ["Agent"]

logger = logging.getLogger(__name__)

# Concurrent outbound requests. A probe period sends a handful of messages, so
# this covers bursts (gossip, leave, a hand-off) without unbounded tasks.
SENDER_TASKS = 16
# Outbound messages waiting for a sender; beyond this they are dropped.
SEND_QUEUE_SIZE = 1024
# Deadline of the leave broadcast at shutdown.
LEAVE_TIMEOUT = 2.0
# Seconds an idle connection to another agent is kept. A member pings each
# other member about once per N probe periods, so a connection must outlive that
# or every probe pays a TCP handshake and teardown (7 more packets, about 500
# bytes on loopback). Past about 100 members at 1 s periods they expire.
KEEPALIVE_EXPIRY = 120.0
# The server keeps idle connections longer than its clients do, so that a client
# never sends a probe on a connection the server is closing.
SERVER_KEEPALIVE_TIMEOUT = KEEPALIVE_EXPIRY + 30.0
# Deadline of the request to a dead member's cluster endpoint before reporting.
CLUSTER_ENDPOINT_TIMEOUT = 5.0
# Seconds reported records are kept on disk; longer than any outage we expect
# an agent to be restarted during.
RECORD_RETENTION = 7 * 24 * 3600.0
# Deadline of one attempt to publish the public key to the archive, and the
# first and longest wait between attempts, in seconds.
PUBLISH_KEY_TIMEOUT = 30.0
PUBLISH_KEY_INITIAL_DELAY = 1.0
PUBLISH_KEY_MAX_DELAY = 300.0


class Agent:
    """One member of the mesh, serving HTTP and reporting incidents."""

    def __init__(
        self,
        config: AgentConfig,
        signing_key: SigningKey,
        *,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._key = signing_key
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self.keyring = Keyring({**config.trusted_keys, config.name: signing_key.verify_key})
        self.metrics = AgentMetrics(config.name)
        self._replay_guard = ReplayGuard(config.profile.replay_window)

        # Created in run(), where trio's clock exists.
        self.node: Node | None = None
        self._outbox: Outbox | None = None
        # Routes each reported alarm into the outbox; created with it.
        self._dispatcher: Dispatcher | None = None
        # Set by request_stop(); run() then leaves gracefully and returns.
        self._stop = trio.Event()
        # Set when an inbound message may have changed the core's deadlines.
        self._wake = trio.Event()
        self._send_in, self._send_out = trio.open_memory_channel[Outbound](SEND_QUEUE_SIZE)
        self._reports_in, self._reports_out = trio.open_memory_channel[Report](256)
        # The HTTP client of receivers and cluster endpoints; None without either.
        self._client: Any = None
        # Addresses that responded 401 to our frames, warned about once each.
        self._unauthorized_peers: set[str] = set()
        # Last result of each check, to log changes only.
        self._check_ok: dict[str, bool] = {}
        # Failed rejections logged per reason, to log each reason's first one only.
        self._logged_reasons: set[Reason] = set()

    # ------------------------------------------------------------------
    # Clocks
    # ------------------------------------------------------------------

    def _wall_time_of(self, monotonic: float) -> float:
        return self._wall_clock() - (trio.current_time() - monotonic)

    # ------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask run() to leave the mesh gracefully and return."""
        self._stop.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve, probe and report until request_stop(), then leave."""
        config = self.config
        profile = config.profile
        self.node = Node(
            name=config.name,
            address=config.advertise,
            swim_config=profile.swim,
            handoff_delay=profile.handoff_delay,
            group_wait=profile.group_wait,
            group_share=profile.group_share,
            checks=config.checks,
            sign=lambda data: self._key.sign(data).signature,
            verify=self.keyring.verify,
            now=trio.current_time(),
            seeds=config.peers,
            rng=self._rng,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._record_store = RecordStore(config.data_dir, retention=RECORD_RETENTION)
        self.node.restore_records(self._record_store.load(), trio.current_time())
        self._alarm_builder = AlarmBuilder(
            reporter=config.name,
            cluster=config.cluster,
            checks={check.name: check for check in config.checks},
            wall_time_of=self._wall_time_of,
            wall_clock=self._wall_clock,
        )
        async with contextlib.AsyncExitStack() as stack:
            # Frames to other agents go through a client of their own: one TCP
            # segment per request, long keep-alive, no default headers.
            mesh_client = await stack.enter_async_context(
                FrameClient(keepalive_expiry=KEEPALIVE_EXPIRY)
            )
            archive = open_archive(
                config.archive,
                endpoint_url=config.archive_endpoint_url,
                region=config.archive_region,
            )
            archive = MeteredArchive(archive, self.metrics)
            destinations: dict[str, Any] = {"archive": ArchiveDestination(archive)}
            if config.sinks or config.cluster_endpoints:
                # Imported here, so that an agent with neither never loads httpx.
                from .tls import open_http_client

                self._client = await stack.enter_async_context(
                    open_http_client(timeout=profile.request_timeout)
                )
            if config.sinks:
                # Imported here: the receivers load httpx and their renderers,
                # memory an agent without receivers does not spend.
                from sinks.config import open_sink
                from sinks.dispatch import SinkDestination

                for sink_config in config.sinks:
                    sink = open_sink(sink_config, signing_key=self._key, signer=config.name)
                    destinations[sink.name] = SinkDestination(sink, self._client)
            self.metrics.add_receivers(destinations)
            self._outbox = Outbox(
                config.data_dir / "outbox",
                destinations,
                decode=lambda frame: open_alarm(frame, self.keyring),
                now=self._wall_clock,
                observer=self.metrics,
                policy=config.outbox_policy,
                dead_letter_archive=archive,
            )
            router = config.routing or Router.broadcast(s.name for s in config.sinks)
            incidents = self.node.incidents
            self._dispatcher = Dispatcher(
                router,
                self._outbox,
                is_open=lambda incident: getattr(
                    incidents.get(incident), "status", None
                ) == "firing",
            )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish_public_key, archive)
                await nursery.start(self._serve_http)
                await nursery.start(self._outbox.run)
                await nursery.start(self._dispatcher.run)
                for _ in range(SENDER_TASKS):
                    nursery.start_soon(self._sender, mesh_client)
                nursery.start_soon(self._reporter)
                self._dispatch(self.node.join(trio.current_time()))
                nursery.start_soon(self._timer_loop)
                if config.checks:
                    # Imported here: the checks load httpx and their clients.
                    from .checks.runner import run_checks_forever

                    await nursery.start(run_checks_forever, config.checks, self._on_observation)
                logger.info(
                    "agent started member=%s listen=%s advertise=%s seeds=%s profile=%s",
                    config.name,
                    config.listen,
                    config.advertise,
                    ",".join(config.peers) or "-",
                    profile.name,
                )
                task_status.started()

                await self._stop.wait()
                await self._leave(mesh_client)
                nursery.cancel_scope.cancel()
        logger.info("agent stopped member=%s", config.name)

    async def _serve_http(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        hypercorn_config = HypercornConfig()
        hypercorn_config.bind = [self.config.listen]
        hypercorn_config.accesslog = None
        hypercorn_config.errorlog = logging.getLogger("hypercorn.error")
        hypercorn_config.graceful_timeout = 1.0
        hypercorn_config.keep_alive_timeout = SERVER_KEEPALIVE_TIMEOUT
        hypercorn_config.include_server_header = False
        await serve(create_app(self), hypercorn_config, task_status=task_status)

    async def _publish_public_key(self, archive) -> None:
        # Readers of the archive find the keys to verify alarms with here, next
        # to the alarms; the trusted keys of a configuration take precedence.
        # This task runs beside the mesh and retries with backoff, so an
        # archive that is down at start delays nothing and gets the key later.
        public_key = (encode_public_key(self._key.verify_key) + "\n").encode()
        delay, logged = PUBLISH_KEY_INITIAL_DELAY, None
        while True:
            try:
                with trio.fail_after(PUBLISH_KEY_TIMEOUT):
                    await archive.put(public_key_key(self.name), public_key)
                return
            except Exception as exc:  # the archive is optional for the mesh to run
                if str(exc) != logged:
                    logger.warning("cannot publish public key to archive: %s", exc)
                    logged = str(exc)
            await trio.sleep(delay)
            delay = min(delay * 2, PUBLISH_KEY_MAX_DELAY)

    async def _leave(self, client: FrameClient) -> None:
        assert self.node is not None
        outbound = self.node.leave(trio.current_time())
        logger.info("leaving the mesh member=%s notifying=%d", self.name, len(outbound))
        with trio.move_on_after(LEAVE_TIMEOUT) as scope:
            scope.shield = True
            async with trio.open_nursery() as nursery:
                for item in outbound:
                    nursery.start_soon(self._post, client, item)
        if scope.cancelled_caught:
            logger.warning("leave notices timed out after %.1fs", LEAVE_TIMEOUT)

    # ------------------------------------------------------------------
    # Inbound
    # ------------------------------------------------------------------

    def count_oversized(self) -> None:
        self.metrics.rejected.labels(Reason.OVERSIZED.value).inc()

    def _reject(self, error: RejectedMessage) -> None:
        self.metrics.rejected.labels(error.reason.value).inc()
        # The first rejection of each reason is logged, the rest only counted.
        if error.reason not in self._logged_reasons:
            self._logged_reasons.add(error.reason)
            logger.warning(
                "rejected inbound message reason=%s detail=%s (further ones are "
                "only counted in alarminati_messages_rejected_total)",
                error.reason.value,
                error.detail,
            )
        else:
            logger.debug("rejected inbound message reason=%s detail=%s", error.reason.value, error.detail)

    def _open(self, body: bytes) -> tuple[str, list]:
        """Verify a frame and decode its messages; raises RejectedMessage."""
        frame = open_frame(
            body, self.keyring, now=self._wall_clock(), replay_guard=self._replay_guard
        )
        if not isinstance(frame.payload, list):
            raise RejectedMessage(Reason.MALFORMED, "payload is not a list of messages")
        try:
            messages = [decode_message(raw) for raw in frame.payload]
        except ValueError as exc:
            raise RejectedMessage(Reason.MALFORMED, str(exc)) from None
        first = message_type(messages[0]) if messages else "none"
        self.metrics.bytes_received.labels(first).inc(frame.size)
        return frame.sender, messages

    def handle_frame(self, body: bytes) -> tuple[int, bytes]:
        """Handle a POST /healthz body; return the HTTP status and response body."""
        try:
            sender, messages = self._open(body)
        except RejectedMessage as exc:
            self._reject(exc)
            status = 401 if exc.reason in (Reason.UNKNOWN_SENDER, Reason.BAD_SIGNATURE) else 400
            return status, f"rejected: {exc}\n".encode()
        if sender == self.name:
            return 400, b"rejected: frame claims to come from this agent\n"

        replies = self._handle_messages(sender, messages)
        if not replies:
            return 200, b""
        return 200, self._seal([o.message for o in replies])

    def _handle_messages(self, sender: str, messages: list) -> list[Outbound]:
        assert self.node is not None
        replies = []
        now = trio.current_time()
        for message in messages:
            self.metrics.messages_received.labels(message_type(message)).inc()
            out = self.node.handle(sender, message, now)
            replies += [o for o in out if o.reply]
            self._dispatch([o for o in out if not o.reply])
        self._after_core()
        self._wake.set()
        return replies

    # ------------------------------------------------------------------
    # Outbound
    # ------------------------------------------------------------------

    def _seal(self, messages: list) -> bytes:
        payload = [encode_message(m) for m in messages]
        return seal(self._key, self.name, payload, self._wall_clock())

    def _dispatch(self, outbound: list[Outbound]) -> None:
        for item in outbound:
            try:
                self._send_in.send_nowait(item)
            except trio.WouldBlock:
                kind = message_type(item.message)
                self.metrics.send_failures.labels(kind, SEND_QUEUE_FULL).inc()
                logger.debug("send queue full, dropped type=%s peer=%s", kind, item.target)

    async def _sender(self, client: FrameClient) -> None:
        async for item in self._send_out:
            await self._post(client, item)

    async def _post(self, client: FrameClient, item: Outbound) -> None:
        """POST one message and handle the messages in the response."""
        kind = message_type(item.message)
        body = self._seal([item.message])
        # A ping is only useful within the probe timeout; any later ack would
        # arrive after the core has moved on.
        if isinstance(item.message, Ping):
            timeout = self.node.swim.probe_timeout()
        else:
            timeout = self.config.profile.request_timeout
        try:
            with trio.fail_after(timeout):
                response = await client.post(
                    item.address, "/healthz", body, connect_timeout=timeout
                )
        except (PeerTimeout, trio.TooSlowError) as exc:
            # No answer in time: the core's own timers deal with silence.
            self.metrics.send_failures.labels(kind, SEND_UNREACHABLE).inc()
            logger.debug("send timed out type=%s peer=%s error=%r", kind, item.target, exc)
            return
        except (PeerError, ValueError) as exc:
            self.metrics.send_failures.labels(kind, SEND_UNREACHABLE).inc()
            logger.debug("send failed type=%s peer=%s error=%r", kind, item.target, exc)
            self._delivery_failed(item)
            return
        self.metrics.bytes_sent.labels(kind).inc(len(body))
        if response.status_code != 200:
            self.metrics.send_failures.labels(kind, SEND_REJECTED).inc()
            if response.status_code == 401 and item.address not in self._unauthorized_peers:
                # Usually a key mismatch, which no retry fixes, so log it once per peer.
                self._unauthorized_peers.add(item.address)
                logger.warning(
                    "peer rejected our signed frame peer=%s address=%s answer=%r; check "
                    "that its trusted_keys holds this agent's public key (key_file.pub)",
                    item.target or "seed",
                    item.address,
                    response.text.strip()[:200],
                )
            logger.debug(
                "peer rejected message type=%s peer=%s status=%d body=%r",
                kind,
                item.target,
                response.status_code,
                response.text[:200],
            )
            self._delivery_failed(item)
            return
        self.metrics.messages_sent.labels(kind).inc()
        if not response.content:
            return
        try:
            sender, messages = self._open(response.content)
        except RejectedMessage as exc:
            self._reject(exc)
            return
        # Answers in a response come from the member we addressed, or from
        # whoever a seed turns out to be.
        if item.target is not None and sender != item.target:
            self._reject(
                RejectedMessage(
                    Reason.BAD_SIGNATURE,
                    f"answer from {item.address} signed by {sender!r}, expected {item.target!r}",
                )
            )
            return
        replies = self._handle_messages(sender, messages)
        # A reply to a reply is not part of the protocol; send it as a message.
        self._dispatch([Outbound(item.address, sender, r.message) for r in replies])

    def _delivery_failed(self, item: Outbound) -> None:
        # A refused or rejected message is news for the core: a probe whose
        # ping was refused goes indirect without waiting for its timeout.
        assert self.node is not None
        self._dispatch(self.node.delivery_failed(item, trio.current_time()))
        self._after_core()
        self._wake.set()

    # ------------------------------------------------------------------
    # Timers and events
    # ------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        assert self.node is not None
        while True:
            with trio.move_on_at(self.node.next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if self.node.next_deadline() <= now:
                outbound = self.node.tick(now)
                self._count_probes(outbound)
                self._dispatch(outbound)
                self._after_core()

    def _count_probes(self, outbound: list[Outbound]) -> None:
        # A tick sends a ping only to start a probe (a ping forwarded for a
        # ping-req leaves from handle()), and ping-reqs only when a probe's
        # direct ping timed out: all of them for that one probe.
        messages = [o.message for o in outbound]
        self.metrics.probes_sent.inc(sum(isinstance(m, Ping) for m in messages))
        if any(isinstance(m, PingReq) for m in messages):
            self.metrics.probes_indirect.inc()

    def _after_core(self) -> None:
        assert self.node is not None
        self._log_events(self.node.drain_events())
        for report in self.node.drain_reports():
            # The report is sealed and queued by a task, not here, because the
            # outbox writes to disk before the first attempt.
            try:
                self._reports_in.send_nowait(report)
            except trio.WouldBlock:  # pragma: no cover - 256 reports in one tick
                logger.error("report queue full, dropped incident=%s", report.incident)

    def _log_events(self, events: NodeEvents) -> None:
        for event in events.members:
            self.metrics.member_changes.labels(event.name, event.new.label).inc()
            if event.new is State.SUSPECT and event.local:
                self.metrics.suspicions_raised.inc()
            elif event.old is State.SUSPECT and event.new is State.ALIVE:
                self.metrics.suspicions_refuted.inc()
            level = logging.INFO
            if event.new in (State.SUSPECT, State.DEAD):
                level = logging.WARNING
            logger.log(
                level,
                "member %s member=%s incarnation=%d previous=%s source=%s",
                event.new.label,
                event.name,
                event.incarnation,
                event.old.label if event.old else "unknown",
                "local" if event.local else "gossip",
            )
        for probe in events.probes:
            if probe.outcome == "failed":
                self.metrics.probes_failed.inc()
            self.metrics.probe_nacks.inc(probe.nacks)
            if probe.rtt is not None:
                self.metrics.probe_rtt.observe(probe.rtt)
        for entry in events.incidents:
            self.metrics.incident_decisions.labels(entry.status, entry.decision.value).inc()
            if entry.decision is Decision.WAIT_HANDOFF:
                logger.info(
                    "waiting for hand-off incident=%s status=%s rank=%d delay=%.1fs",
                    entry.incident,
                    entry.status,
                    entry.rank,
                    entry.delay,
                )
            elif entry.decision is not Decision.REPORT_NOW:
                logger.info(
                    "not reporting incident=%s status=%s rank=%d reason=%s",
                    entry.incident,
                    entry.status,
                    entry.rank,
                    entry.decision.value,
                )
        for reporter in events.bad_records:
            self.metrics.rejected.labels(BAD_RECORD_SIGNATURE).inc()
            logger.warning("dropped reported record with a bad signature reporter=%s", reporter)

    def _on_observation(self, observation: Observation) -> None:
        """Feed one check result to the core; log when a check changes."""
        assert self.node is not None
        previous = self._check_ok.get(observation.check)
        self._check_ok[observation.check] = observation.ok
        if previous is not None and previous != observation.ok:
            level = logging.INFO if observation.ok else logging.WARNING
            logger.log(
                level,
                "check %s check=%s reason=%s summary=%s",
                "passing" if observation.ok else "failing",
                observation.check,
                observation.reason,
                observation.summary,
            )
        now, wall = trio.current_time(), self._wall_clock()
        self.node.observe_check(observation.check, observation.ok, observation.summary, now, wall)
        self._after_core()
        self._wake.set()

    async def _reporter(self) -> None:
        async for report in self._reports_out:
            await self._report(report)

    async def _report(self, report: Report) -> None:
        assert self.node is not None and self._dispatcher is not None
        cluster_answers = await self._probe_cluster_endpoint(report)
        alarm = self._alarm_builder.build(report, cluster_answers=cluster_answers)
        signed: SignedAlarm = seal_alarm(self._key, alarm)
        # The route picks the receivers. The entries are durable before
        # anything is sent, and before the record informs the other ranks that
        # they need not report. The write and its fsync block the event loop
        # for a few milliseconds, once per alarm.
        decision = self._dispatcher.submit(signed)
        self.metrics.alarms_reported.labels(report.status).inc()
        logger.info(
            "reporting incident=%s status=%s rank=%d route=%s receivers=%s",
            report.incident,
            report.status,
            report.rank,
            decision.route.name,
            ",".join(decision.receivers) or "-",
        )
        self._dispatch(self.node.confirm_report(report, signed.alarm.sent_at, trio.current_time()))
        self._save_records()

    async def _probe_cluster_endpoint(self, report: Report) -> bool | None:
        """Tell a dead agent from a dead cluster by the cluster's own endpoint.

        Returns whether the endpoint configured for the member answered (any
        HTTP status counts: the cluster is up), or None without one.
        """
        url = self.config.cluster_endpoints.get(report.subject)
        if report.kind is not Kind.MEMBER_DOWN or report.status != "firing" or url is None:
            return None
        import httpx  # loaded already: the client exists when endpoints are configured

        try:
            with trio.fail_after(CLUSTER_ENDPOINT_TIMEOUT):
                await self._client.get(url)
        except (httpx.HTTPError, trio.TooSlowError, OSError) as exc:
            logger.info("cluster endpoint failed member=%s error=%r", report.subject, exc)
            return False
        return True

    def _save_records(self) -> None:
        assert self.node is not None
        try:
            self._record_store.save(self.node.incidents.records(), self._wall_clock())
        except OSError as exc:
            logger.error("cannot save reported records path=%s error=%s", self._record_store.path, exc)

    # ------------------------------------------------------------------
    # Views
    # ------------------------------------------------------------------

    def peers_snapshot(self) -> list[dict[str, Any]]:
        """Return the membership table as /peers shows it."""
        assert self.node is not None
        swim = self.node.swim
        members = []
        for member in sorted(swim.members.values(), key=lambda m: m.name):
            members.append(
                {
                    "name": member.name,
                    "address": member.address,
                    "state": member.state.label,
                    "incarnation": member.incarnation,
                    "since": round(self._wall_time_of(member.since), 3),
                    "self": member.name == self.name,
                }
            )
        return members

    def refresh_gauges(self) -> None:
        """Update gauges that are read from state rather than counted."""
        assert self.node is not None
        stats = self._outbox.statistics() if self._outbox is not None else None
        self.metrics.refresh(self.node, stats)
