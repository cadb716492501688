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

import httpx
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
        failures.extend(group.exceptions)
    for exc in failures:
        logger.error("agent failed member=%s listen=%s error=%s", config.name, config.listen, exc)
    return EXIT_FAILURE if failures else 0


# ----------------------------------------------------------------------
# peers
# ----------------------------------------------------------------------


def cmd_peers(args: argparse.Namespace) -> int:
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
    return Keyring(keys), config.archive


def cmd_logs(args: argparse.Namespace) -> int:
    from storage import open_archive
    from storage.query import (
        format_json_lines,
        format_table,
        load_published_keys,
        parse_since,
        query_alarms,
    )

    from .keys import Keyring

    now = time.time()
    try:
        since = parse_since(args.since, now)
        until = parse_since(args.until, now) if args.until else now
    except ValueError as exc:
        return _fail(str(exc))

    keyring, archive_spec = None, args.archive
    if args.config:
        try:
            keyring, configured_archive = _keyring_from_config(args.config)
        except (ConfigError, KeyFileError) as exc:
            return _fail(f"invalid configuration {args.config!r}: {exc}")
        archive_spec = archive_spec or configured_archive
    if not archive_spec:
        return _fail("no archive given; pass --archive PATH or --config FILE")

    async def run() -> str:
        archive = open_archive(archive_spec)
        ring = keyring
        if ring is None:
            # Without a configuration, trust the keys the agents published in
            # the archive: this detects corruption and tampering with alarms,
            # not an attacker who can also rewrite the keys.
            ring = Keyring(await load_published_keys(archive))
        results = await query_alarms(
            archive,
            ring,
            since=since,
            until=until,
            cluster=args.cluster,
            subject=args.subject,
            status=args.status,
        )
        return format_json_lines(results) if args.json else format_table(results)

    print(trio.run(run), end="")
    return 0


# ----------------------------------------------------------------------
# secrets, route, send-test
# ----------------------------------------------------------------------


def _redact_secrets(config) -> None:
    """Mask every sink secret in log lines, whichever logger writes them."""
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

    return trio.run(run_demo, args.base_port, args.workdir)


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

    logs = commands.add_parser("logs", help="print archived alarms in time order")
    logs.add_argument("--archive", help="archive folder (default: the config's archive)")
    logs.add_argument("--config", help="agent configuration whose trusted keys verify alarms")
    logs.add_argument("--since", default="1h", help="start: a duration ago (90s, 30m, 1h, 2d) or RFC 3339 time")
    logs.add_argument("--until", help="end: a duration ago or RFC 3339 time (default: now)")
    logs.add_argument("--cluster", help="only alarms of this cluster")
    logs.add_argument("--subject", help="only alarms of this subject, e.g. member/busan")
    logs.add_argument("--status", choices=["firing", "resolved"], help="only this status")
    logs.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    logs.set_defaults(func=cmd_logs)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
