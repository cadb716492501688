"""Benchmark of deduplicated notification: Alarminati against Alertmanager in HA mode.

Run it directly (``just bench-dedup``); pytest does not collect it::

    python bench/bench_dedup.py [--incidents 20] [--rounds 3] [--killed-rounds 3]
        [--handoff-delay 1.5] [--only alertmanager|alarminati] [--keep PATH]

Both sides see the same thing: ``--incidents`` incidents at one moment, seen
by all three members, over several rounds, then again with one member killed
just before the event.

* Alertmanager: 3 replicas of Debian's ``prometheus-alertmanager`` clustered
  on loopback, one webhook receiver, grouped by incident with ``group_wait``
  0 s. The event is the moment the alerts are POSTed to all three replicas, as
  a Prometheus HA pair does. The killed replica is the one at cluster
  position 0, which every other replica waits for.
* Alarminati: 3 agent processes that each run the same shared HTTP checks
  (1 s interval) against targets served here. The event is the moment the
  targets start returning 503, so the latency includes the agents' check
  interval. The killed agent rotates over the members. Incidents whose first
  rank (rendezvous hashing over all three members) is the killed agent give
  the hand-off latency.

The script prints one table and writes nothing else; the numbers go into
docs/benchmarks.md by hand, with the machine they were measured on. A default
run takes 4 to 5 minutes.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio

from dedup_alarminati import run_alarminati
from dedup_alertmanager import PEER_TIMEOUT, ensure_alertmanager, run_alertmanager
from dedup_http import BenchServer, run_bench_server
from dedup_outcome import RoundOutcome, Summary, describe_round, median, p90, summarize


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=20, help="incidents per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds with every member up"
    )
    parser.add_argument(
        "--killed-rounds",
        type=int,
        default=3,
        help="rounds with one member killed first",
    )
    parser.add_argument(
        "--handoff-delay",
        type=float,
        default=1.5,
        help="agents' timing.handoff_delay in seconds (default: the local profile's)",
    )
    parser.add_argument(
        "--only", choices=("alertmanager", "alarminati"), help="run one side"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep configs and logs in this folder (default: removed)",
    )
    args = parser.parse_args()
    if not 1 <= args.incidents <= 100:
        parser.error(f"--incidents {args.incidents}: expected 1 to 100")
    if not 0 <= args.rounds <= 10 or not 0 <= args.killed_rounds <= 10:
        parser.error("--rounds and --killed-rounds: expected 0 to 10 each")
    return args


async def run(
    args: argparse.Namespace, root: Path, alertmanager: str | None
) -> dict[str, tuple[Summary, Summary]] | None:
    """Run the selected sides in turn; return None when SIGTERM stopped the run."""
    server = BenchServer(args.incidents)
    results = {}
    terminated = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_sigterm, nursery.cancel_scope, terminated)
        base_url = await nursery.start(run_bench_server, server)
        if alertmanager is not None:
            print("alertmanager: 3 replicas", flush=True)
            outcomes = await run_alertmanager(
                server,
                alertmanager,
                f"{base_url}/alertmanager",
                root / "alertmanager",
                incidents=args.incidents,
                rounds=args.rounds,
                killed_rounds=args.killed_rounds,
            )
            results["alertmanager"] = _split(outcomes)
        if args.only in (None, "alarminati"):
            print("alarminati: 3 agents", flush=True)
            outcomes = await run_alarminati(
                server,
                base_url,
                root / "alarminati",
                incidents=args.incidents,
                rounds=args.rounds,
                killed_rounds=args.killed_rounds,
                handoff_delay=args.handoff_delay,
            )
            results["alarminati"] = _split(outcomes)
        nursery.cancel_scope.cancel()
    return None if terminated.is_set() else results


async def _cancel_on_sigterm(scope: trio.CancelScope, terminated: trio.Event) -> None:
    # Cancelling unwinds every side through its finally block, which stops
    # the processes it started; Ctrl-C does the same through KeyboardInterrupt.
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            print("terminated: stopping every process started", flush=True)
            terminated.set()
            scope.cancel()
            return


def _split(outcomes: list[RoundOutcome]) -> tuple[Summary, Summary]:
    for outcome in outcomes:
        print(f"  {describe_round(outcome)}", flush=True)
    plain = [o for o in outcomes if o.killed is None]
    killed = [o for o in outcomes if o.killed is not None]
    return summarize(plain), summarize(killed)


SCENARIOS = (("all members up", 0), ("first member killed", 1))
SYSTEMS = ("alertmanager", "alarminati")


def format_table(results: dict[str, tuple[Summary, Summary]]) -> str:
    """Format the results as one Markdown table, with ratios when both sides ran.

    The hand-off row covers the incidents whose first rank was killed: every
    Alertmanager incident of a killed round (its position-0 peer died), and the
    Alarminati incidents that rendezvous hashing over all three members ranks
    first on the killed agent.
    """
    lines = [
        "| Scenario | Measure | Alertmanager | Alarminati | Alarminati/Alertmanager |",
        "|---|---|---|---|---|",
    ]
    for scenario, index in SCENARIOS:
        summaries = {name: results[name][index] for name in SYSTEMS if name in results}
        rows = [
            ("incidents", lambda s: s.incidents, False),
            ("exactly one notification", lambda s: s.exactly_one, False),
            ("no notification", lambda s: s.missing, False),
            ("max notifications per incident", lambda s: s.max_deliveries, False),
            ("mean notifications per incident", lambda s: s.mean_deliveries, True),
            ("latency median (s)", lambda s: median(s.latencies), True),
            ("latency p90 (s)", lambda s: p90(s.latencies), True),
        ]
        if index == 1:
            rows.append(
                (
                    "hand-off latency median (s)",
                    lambda s: median(s.handoff_latencies),
                    True,
                )
            )
            rows.append(
                ("hand-off incidents", lambda s: len(s.handoff_latencies), False)
            )
        for measure, read, with_ratio in rows:
            values = {name: read(summary) for name, summary in summaries.items()}
            cells = [_cell(values.get(name)) for name in SYSTEMS]
            ratio = _ratio(values) if with_ratio else ""
            lines.append(f"| {scenario} | {measure} | {' | '.join(cells)} | {ratio} |")

    for name, summaries in results.items():
        resolved = sum(s.resolved for s in summaries)
        if resolved:
            duplicated = sum(s.resolved_duplicated for s in summaries)
            lines.append("")
            lines.append(
                f"{name}: {resolved} incidents resolved, "
                f"{duplicated} of them with more than one resolved notification."
            )
    if "alertmanager" in results:
        lines.append("")
        timeout = f"--cluster.peer-timeout={PEER_TIMEOUT:g}s"
        lines.append(f"Alertmanager ran with {timeout} (its default).")
    return "\n".join(lines)


def _cell(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def _ratio(values: dict[str, float | None]) -> str:
    ours, theirs = values.get("alarminati"), values.get("alertmanager")
    if ours is None or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}"


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    alertmanager = None
    if args.only in (None, "alertmanager"):
        alertmanager = ensure_alertmanager()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    root.mkdir(parents=True, exist_ok=True)
    # A shell starts background jobs with SIGINT ignored; restore Ctrl-C so that
    # it interrupts the run and the cleanup runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results, interrupted = None, False
    try:
        results = trio.run(partial(run, args, root, alertmanager))
    except* KeyboardInterrupt:
        interrupted = True
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if interrupted:
        print("interrupted: every process started was stopped", file=sys.stderr)
        sys.exit(130)
    if results is None:
        sys.exit(143)
    print(format_table(results))


if __name__ == "__main__":
    main()
