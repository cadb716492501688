"""The ``alarminati`` command.

Exit codes: 0 on success, 1 on a runtime failure, 2 on invalid input (a bad
configuration, a bad argument, a missing key file).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

import trio

from .errors import ConfigError, KeyFileError

__all__ = ["main"]

logger = logging.getLogger("mesh.cli")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _configure_logging(level: str, log_format: str = "text") -> None:
    from .logs import configure_logging

    configure_logging(level, log_format)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"alarminati: {message}", file=sys.stderr)
    return code


# ----------------------------------------------------------------------
# keygen
# ----------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    from .keys import encode_public_key, generate_key_files

    try:
        key = generate_key_files(Path(args.out))
    except KeyFileError as exc:
        return _fail(str(exc))
    print(f"wrote {args.out} (mode 0600) and {args.out}.pub", file=sys.stderr)
    print(encode_public_key(key.verify_key))
    return 0


# ----------------------------------------------------------------------
# agent
# ----------------------------------------------------------------------


async def _run_agent(agent) -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("received %s, leaving the mesh", signal.Signals(signum).name)
                    agent.request_stop()
                    return

        nursery.start_soon(stop_on_signal)
        await agent.run()
        nursery.cancel_scope.cancel()


def cmd_agent(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .config import load_config
    from .keys import load_signing_key

    try:
        config = load_config(Path(args.config))
        key = load_signing_key(config.key_file)
    except ConfigError as exc:
        return _fail(f"invalid configuration {args.config!r}: {exc}")
    except KeyFileError as exc:
        return _fail(f"key_file: {exc}")

    _redact_secrets(config)
    agent = Agent(config, key)
    failures: list[BaseException] = []
    try:
        trio.run(_run_agent, agent)
    except* OSError as group:
        # Binding the listen address is the usual cause: in use, or not local.
        failures.extend(_leaves(group))
    for exc in failures:
        logger.error("agent failed member=%s listen=%s error=%s", config.name, config.listen, exc)
        print(
            f"alarminati: cannot run the agent on listen {config.listen!r}: {exc}; "
            "choose a free port on an address of this host",
            file=sys.stderr,
        )
    return EXIT_FAILURE if failures else 0


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """Return the exceptions inside ``group`` and its nested groups."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


# ----------------------------------------------------------------------
# peers
# ----------------------------------------------------------------------


def cmd_peers(args: argparse.Namespace) -> int:
    import httpx

    from .peers_table import format_peers

    url = args.url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        response = httpx.get(f"{url}/peers", timeout=args.timeout)
        response.raise_for_status()
        data = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return _fail(f"cannot read {url}/peers: {exc}", EXIT_FAILURE)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(format_peers(data["members"]), end="")
    return 0


# ----------------------------------------------------------------------
# logs
# ----------------------------------------------------------------------


def _keyring_from_config(path: str):
    from .config import load_config
    from .keys import Keyring, load_signing_key

    config = load_config(Path(path))
    keys = dict(config.trusted_keys)
    keys[config.name] = load_signing_key(config.key_file).verify_key
    return Keyring(keys), config


def _open_archives(args: argparse.Namespace, config) -> list:
    """Open the archives named by --archive, or else the configuration's.

    Raises:
        ArchiveError: a location is not valid.
    """
    from storage import ArchiveError, is_s3_url, open_archive

    if args.archive:
        s3_options = args.endpoint_url is not None or args.region is not None
        if s3_options and not any(is_s3_url(spec) for spec in args.archive):
            raise ArchiveError("--endpoint-url and --region apply only to s3:// archives")
        archives = []
        for spec in args.archive:
            s3 = is_s3_url(spec)
            archives.append(
                open_archive(
                    spec,
                    endpoint_url=args.endpoint_url if s3 else None,
                    region=args.region if s3 else None,
                )
            )
        return archives
    return [
        open_archive(
            config.archive,
            endpoint_url=args.endpoint_url or config.archive_endpoint_url,
            region=args.region or config.archive_region,
        )
    ]


def _project_of(config):
    """Return the function that tells an alarm's project by the config's routing.

    Returns None when there is no configuration or it has no routing.
    """
    router = getattr(config, "routing", None)
    if router is None:
        return None

    def project_of(alarm) -> str | None:
        decision = router.decide(
            subject=alarm.subject, cluster=alarm.cluster, severity=alarm.severity
        )
        return decision.project

    return project_of


async def _published_keyring(archives: list):
    """Return the keys the agents published in the archives.

    A member that published different keys in different archives is left out,
    so that its alarms show as failed rather than trusting either key.
    """
    from storage import load_published_keys

    from .keys import Keyring

    keys, conflicts = {}, set()
    for archive in archives:
        for member, key in (await load_published_keys(archive)).items():
            if member in keys and bytes(keys[member]) != bytes(key):
                conflicts.add(member)
            keys.setdefault(member, key)
    for member in conflicts:
        logger.warning(
            "ignoring the keys of a member published twice: member=%s", member
        )
        del keys[member]
    return Keyring(keys)


def cmd_logs(args: argparse.Namespace) -> int:
    from storage import (
        ArchiveError,
        format_json_lines,
        format_table,
        merge_results,
        parse_since,
        query_alarms,
    )

    now = time.time()
    try:
        since = parse_since(args.since, now)
        until = parse_since(args.until, now) if args.until else now
    except ValueError as exc:
        return _fail(str(exc))

    keyring, config = None, None
    if args.config:
        try:
            keyring, config = _keyring_from_config(args.config)
        except (ConfigError, KeyFileError) as exc:
            return _fail(f"invalid configuration {args.config!r}: {exc}")
    if not args.archive and config is None:
        return _fail("no archive given; pass --archive PATH or --config FILE")
    project_of = _project_of(config)
    if args.project and project_of is None:
        return _fail(
            "--project needs --config FILE, whose projects tell which project owns "
            "each alarm's subject or cluster"
        )
    try:
        archives = _open_archives(args, config)
    except ArchiveError as exc:
        return _fail(f"invalid archive: {exc}")

    async def run():
        # Without a configuration, trust the keys the agents published in the
        # archive: this detects corruption and tampering with alarms, not an
        # attacker who can also rewrite the keys.
        ring = keyring if keyring is not None else await _published_keyring(archives)
        per_archive = []
        for archive in archives:
            per_archive.append(
                await query_alarms(
                    archive,
                    ring,
                    since=since,
                    until=until,
                    cluster=args.cluster,
                    project=args.project,
                    subject=args.subject,
                    status=args.status,
                    project_of=project_of,
                )
            )
        return merge_results(*per_archive)

    try:
        results = trio.run(run)
    except ArchiveError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    print(format_json_lines(results) if args.json else format_table(results), end="")

    failed = sum(1 for result in results if not result.verified)
    if failed:
        print(
            f"alarminati: {failed} of {len(results)} records failed verification",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0


# ----------------------------------------------------------------------
# archive prune
# ----------------------------------------------------------------------


def cmd_archive_prune(args: argparse.Namespace) -> int:
    from storage import (
        ArchiveError,
        LocalArchive,
        is_s3_url,
        open_archive,
        parse_duration,
    )

    from .alarm import format_time

    try:
        age = parse_duration(args.older_than)
    except ValueError as exc:
        return _fail(f"--older-than: {exc}")
    if age <= 0:
        return _fail(
            f"--older-than: invalid duration {args.older_than!r}, expected more than 0"
        )

    spec = args.archive
    if spec is None and args.config:
        from .config import load_config

        try:
            spec = load_config(Path(args.config)).archive
        except ConfigError as exc:
            return _fail(f"invalid configuration {args.config!r}: {exc}")
    if spec is None:
        return _fail("no archive given; pass --archive PATH or --config FILE")
    if is_s3_url(spec):
        return _fail(
            "archive prune serves folder archives; give an S3 bucket a lifecycle "
            "rule instead (see docs/archive.md)"
        )
    try:
        archive = open_archive(spec)
    except ArchiveError as exc:
        return _fail(f"invalid archive: {exc}")
    assert isinstance(archive, LocalArchive)

    before = time.time() - age
    try:
        result = trio.run(lambda: archive.prune(before, dry_run=args.dry_run))
    except ArchiveError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {result.objects} objects ({result.bytes} bytes, "
        f"{len(result.hours)} hour folders) sent before {format_time(before)} "
        f"from {str(archive.root)!r}"
    )
    return 0


# ----------------------------------------------------------------------
# secrets, route, send-test
# ----------------------------------------------------------------------


def _redact_secrets(config) -> None:
    """Mask every sink secret in log lines, whichever logger writes them."""
    if not config.sinks:
        # Nothing to mask, and no reason to load every receiver's module.
        return
    from sinks.config import config_secrets
    from sinks.secret import RedactSecrets

    redact = RedactSecrets(config_secrets(config.sinks))
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)


def cmd_route(args: argparse.Namespace) -> int:
    from mesh.alarm import Severity
    from sinks.routing import Router

    from .config import load_config

    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        return _fail(f"invalid configuration {args.config!r}: {exc}")
    router = config.routing or Router.broadcast(s.name for s in config.sinks)
    if args.explain is None:
        for route in router.routes.values():
            owners = [p.name for p in router.projects if p.route == route.name]
            print(
                f"route {route.name}: receivers {', '.join(route.receivers) or '-'}; "
                f"projects {', '.join(owners) or '-'}"
            )
        for project in router.projects:
            owns = [*project.domains, *(f"cluster {c}" for c in project.clusters)]
            print(f"project {project.name} -> {project.route}: {', '.join(owns)}")
        return 0
    cluster = args.cluster or config.cluster
    decision = router.decide(
        subject=args.explain, cluster=cluster, severity=Severity(args.severity)
    )
    print(f"incident:  subject={args.explain} cluster={cluster} severity={args.severity}")
    print("\n".join(decision.explain()))
    return 0


def cmd_send_test(args: argparse.Namespace) -> int:
    from sinks.sendtest import send_test

    from .config import load_config
    from .keys import load_signing_key

    try:
        config = load_config(Path(args.config))
        key = load_signing_key(config.key_file)
    except ConfigError as exc:
        return _fail(f"invalid configuration {args.config!r}: {exc}")
    except KeyFileError as exc:
        return _fail(f"key_file: {exc}")
    sinks = {sink.name: sink for sink in config.sinks}
    if args.sink not in sinks:
        known = ", ".join(sinks) or "none"
        return _fail(f"--sink: unknown sink {args.sink!r}, expected one of: {known}")
    _redact_secrets(config)

    def on_retry(error: str, delay: float) -> None:
        print(f"attempt failed, retrying in {delay:.1f}s: {error}", flush=True)

    print(f"sending a test alarm to {args.sink} through the outbox", flush=True)
    result = trio.run(
        lambda: send_test(
            sinks[args.sink],
            signing_key=key,
            signer=config.name,
            cluster=config.cluster,
            data_dir=config.data_dir,
            max_age=args.timeout,
            on_retry=on_retry,
        )
    )
    plural = "" if result.attempts == 1 else "s"
    if result.delivered:
        print(f"delivered after {result.attempts} attempt{plural}: {result.answer}")
        return 0
    print(f"not delivered after {result.attempts} attempt{plural}: {result.answer}")
    return EXIT_FAILURE


# ----------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        return trio.run(run_demo, args.base_port, args.workdir)
    except KeyboardInterrupt:
        # The demo has stopped its agents on the way out; no traceback needed.
        print("\nalarminati: demo interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------
# simulate
# ----------------------------------------------------------------------

SIMULATE_EVENT_FLAGS = ("crash", "restart", "leave", "partition", "starve", "slow")


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import (
        format_report,
        load_scenario,
        parse_event_flag,
        parse_scenario,
        run_simulation,
    )

    try:
        raw = load_scenario(Path(args.scenario)) if args.scenario else {}
        for key in ("members", "duration", "seed", "profile", "bootstrap", "resolution"):
            value = getattr(args, key)
            if value is not None:
                raw[key] = value
        if args.wire_bytes is not None:
            raw["wire_bytes"] = args.wire_bytes
        network = dict(raw.get("network") or {})
        if args.loss is not None:
            network["loss"] = args.loss
        if args.latency is not None:
            network["latency"] = args.latency
        raw["network"] = network
        events = []
        for action in SIMULATE_EVENT_FLAGS:
            for text in getattr(args, action) or []:
                events.extend(parse_event_flag(action, text))
        scenario = parse_scenario(raw, events)
    except ConfigError as exc:
        return _fail(f"invalid scenario: {exc}")

    report = run_simulation(scenario)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_report(report), end="")
    return 0


# ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alarminati",
        description="A decentralised alarm mesh: agents watch each other and "
        "send one signed alarm per outage.",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines for people, or JSON lines with fields such as member, "
        "incident, receiver and peer for a log collector (default: text)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    keygen = commands.add_parser("keygen", help="write a new Ed25519 key pair")
    keygen.add_argument("--out", required=True, help="private key path; PATH.pub gets the public key")
    keygen.set_defaults(func=cmd_keygen)

    agent = commands.add_parser("agent", help="run one agent")
    agent.add_argument("--config", required=True, help="YAML configuration file")
    agent.set_defaults(func=cmd_agent)

    peers = commands.add_parser("peers", help="print an agent's membership table")
    peers.add_argument("url", help="agent address, e.g. http://127.0.0.1:7001")
    peers.add_argument("--json", action="store_true", help="print the JSON of /peers")
    peers.add_argument("--timeout", type=float, default=5.0, help="request deadline in seconds")
    peers.set_defaults(func=cmd_peers)

    logs = commands.add_parser(
        "logs",
        help="print archived alarms of every cluster in time order, verified",
        description="Print the archived alarms of a time range, merged from every "
        "cluster in time order, each with its signature checked. Exits with 1 when "
        "a record fails verification. S3 credentials come the standard AWS way "
        "(environment, AWS_PROFILE, web identity).",
    )
    logs.add_argument(
        "--archive",
        action="append",
        help="archive folder or s3://bucket/prefix; repeat to merge several "
        "(default: the config's archive)",
    )
    logs.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// archives, e.g. http://minio:9000")
    logs.add_argument("--region", help="region of the s3:// archive's bucket")
    logs.add_argument("--config", help="agent configuration whose trusted keys verify alarms")
    logs.add_argument("--since", default="1h", help="start: a duration ago (90s, 30m, 1h, 2d) or RFC 3339 time")
    logs.add_argument("--until", help="end: a duration ago or RFC 3339 time (default: now)")
    logs.add_argument("--cluster", action="append", help="only alarms of this cluster (repeatable)")
    logs.add_argument("--project", action="append", help="only alarms of this project (repeatable)")
    logs.add_argument("--subject", action="append", help="only alarms of this subject, e.g. member/busan (repeatable)")
    logs.add_argument("--status", choices=["firing", "resolved"], help="only this status")
    logs.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    logs.set_defaults(func=cmd_logs)

    archive = commands.add_parser("archive", help="maintain the alarm archive")
    archive_commands = archive.add_subparsers(dest="archive_command", required=True)
    prune = archive_commands.add_parser(
        "prune",
        help="remove alarms older than a duration from a folder archive",
        description="Remove the alarms, and the dead letters copied to the "
        "archive, from before now minus --older-than, from a folder archive. "
        "For an S3 archive, set a lifecycle rule on the bucket.",
    )
    prune.add_argument("--older-than", required=True, help="age of the alarms to remove, e.g. 90d")
    prune.add_argument("--archive", help="archive folder (default: the config's archive)")
    prune.add_argument("--config", help="agent configuration that names the archive")
    prune.add_argument("--dry-run", action="store_true", help="count what would be removed, remove nothing")
    prune.set_defaults(func=cmd_archive_prune)

    route = commands.add_parser(
        "route", help="show the routes, or explain where an incident would go"
    )
    route.add_argument("--config", required=True, help="YAML configuration file")
    route.add_argument(
        "--explain",
        metavar="SUBJECT",
        help="subject of the incident, e.g. https://shop.example.com/ or member/busan",
    )
    route.add_argument("--cluster", help="cluster of the incident (default: the config's)")
    route.add_argument(
        "--severity",
        default="critical",
        choices=["critical", "warning", "info"],
        help="severity of the incident (default: critical)",
    )
    route.set_defaults(func=cmd_route)

    send_test = commands.add_parser(
        "send-test", help="send a test alarm to one sink and print the receiver's answer"
    )
    send_test.add_argument("--config", required=True, help="YAML configuration file")
    send_test.add_argument("--sink", required=True, help="name of the sink to test")
    send_test.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds of retries before giving up (default: 120)",
    )
    send_test.set_defaults(func=cmd_send_test)

    demo = commands.add_parser("demo", help="run a 3-agent mesh on loopback and kill one")
    demo.add_argument("--base-port", type=int, help="first of 4 consecutive ports to use (default: free ports)")
    demo.add_argument("--workdir", help="folder for keys, configs and data (default: a temporary folder)")
    demo.set_defaults(func=cmd_demo)

    simulate = commands.add_parser(
        "simulate",
        help="run many members of the protocol in one process under a virtual clock",
        description="Run N members of the real protocol core over an in-memory "
        "network with loss, latency, partitions, crashes and starved members, "
        "and report detection times, false positives and traffic. Flags override "
        "the scenario file; event flags add to its events. SEL is a member (m7), "
        "a range (m0-m9), random:K, all, or several joined by commas.",
    )
    simulate.add_argument("--scenario", help="YAML scenario file")
    simulate.add_argument("--members", type=int, help="number of members (default: 20)")
    simulate.add_argument("--duration", type=float, help="simulated seconds (default: 600)")
    simulate.add_argument("--seed", type=int, help="random seed; the same seed gives the same run (default: 1)")
    simulate.add_argument("--profile", choices=["local", "lan", "wan"], help="timing profile (default: lan)")
    simulate.add_argument("--bootstrap", choices=["converged", "join"], help="start converged, or join through m0")
    simulate.add_argument("--loss", type=float, help="share of messages lost, 0 to below 1")
    simulate.add_argument("--latency", help="one-way delay: constant:D, uniform:LOW,HIGH, normal:MEAN,SD, lognormal:MEDIAN,SIGMA, exponential:MEAN (seconds)")
    simulate.add_argument("--resolution", type=float, help="step of simulated time in seconds (default: 0.001)")
    simulate.add_argument("--wire-bytes", choices=["exact", "uncompressed"], help="size frames with compression (exact) or without (faster)")
    simulate.add_argument("--crash", action="append", metavar="SEL@T[:refuse]", help="crash members at T seconds; refuse: connections are refused")
    simulate.add_argument("--restart", action="append", metavar="SEL@T", help="restart crashed members at T")
    simulate.add_argument("--leave", action="append", metavar="SEL@T", help="members leave gracefully at T")
    simulate.add_argument("--partition", action="append", metavar="SEL@T-HEAL", help="cut SEL off from the rest from T until HEAL")
    simulate.add_argument("--starve", action="append", metavar="SEL@T+FOR[/EVERY]", help="freeze members for FOR seconds at T, again every EVERY seconds")
    simulate.add_argument("--slow", action="append", metavar="SEL@T+FOR:DELAY", help="delay the handling of every message members receive by DELAY seconds, for FOR seconds")
    simulate.add_argument("--json", action="store_true", help="print the report as JSON")
    simulate.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
