"""Benchmark of archive queries: one hour and one day of 100,000 alarms over 30 days.

Run it directly or with ``just bench-archive``; pytest does not collect it::

    python bench/bench_archive.py [--alarms 100000] [--days 30] [--runs 7]
                                  [--dir PATH] [--skip-s3] [--json PATH]

The same signed alarms, spread uniformly at random (seeded) over the days and
over ten clusters and three reporters, are archived twice: into a folder, and
into a bucket of a real S3 API server (moto's standalone server) started on
127.0.0.1 for the run. Each query then runs ``--runs`` times, each time over a
different hour or day in the middle of the range, through
:func:`storage.query_alarms`: list the hour prefixes, read every object, verify
every signature. The script prints the median, fastest and slowest time, the
records and requests of one query, and the median CPU time that the querying
process (all its threads) and the S3 server process spent on a query.

Loading the folder writes the files directly, without the fsync of every put
that an agent does; the durable put rate is measured on a sample instead. The
bucket is loaded with 16 concurrent boto3 clients' worth of puts.

moto keeps its objects in memory and scans every key of the bucket on each
listing, so a listing costs more there than in S3 itself, whose index answers a
prefix directly; reads go over real HTTP on loopback, without the network
latency of a remote store. Report the numbers with the machine they ran on.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mesh.alarm import Alarm, Severity, Status, seal_alarm  # noqa: E402
from mesh.keys import Keyring, SigningKey  # noqa: E402
from storage import LocalArchive, alarm_key, parse_s3_url, query_alarms  # noqa: E402

HOUR = 3600.0
DAY = 24 * HOUR
# 2026-11-01T00:00:00Z: the first day of the archived range.
START = 1_793_491_200.0
REPORTERS = ("seoul", "busan", "daegu")
CLUSTERS = tuple(f"cluster-{n:02d}" for n in range(10))
# Puts in flight while loading the bucket.
LOAD_THREADS = 16


def make_frames(
    count: int, days: int, seed: int
) -> tuple[Keyring, list[tuple[str, bytes]]]:
    """Return the keyring and the (key, frame) of ``count`` signed alarms."""
    rng = random.Random(seed)
    keys = {name: SigningKey.generate() for name in REPORTERS}
    objects = []
    for number in range(count):
        sent_at = START + rng.uniform(0, days * DAY)
        cluster = rng.choice(CLUSTERS)
        reporter = rng.choice(REPORTERS)
        alarm = Alarm(
            incident=f"check-failed/{cluster}/api@{number}",
            status=Status.FIRING if number % 2 else Status.RESOLVED,
            severity=Severity.CRITICAL,
            subject=f"https://api.{cluster}.example.com/healthz",
            cluster=cluster,
            reporter=reporter,
            observers=REPORTERS,
            started_at=sent_at - 90,
            sent_at=sent_at,
            summary="GET https://api.example.com/healthz returned 503 three times",
        )
        objects.append((alarm_key(alarm), seal_alarm(keys[reporter], alarm).frame))
    keyring = Keyring({name: key.verify_key for name, key in keys.items()})
    return keyring, objects


def load_folder(root: Path, objects: list[tuple[str, bytes]]) -> float:
    """Write the objects as the folder backend lays them out; return seconds."""
    started = time.perf_counter()
    made: set[Path] = set()
    for key, frame in objects:
        path = root / key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(frame)
    return time.perf_counter() - started


async def durable_put_rate(root: Path, objects: list[tuple[str, bytes]]) -> float:
    """Return LocalArchive.put calls per second (fsynced) over ``objects``."""
    archive = LocalArchive(root)
    started = time.perf_counter()
    for key, frame in objects:
        await archive.put(key, frame)
    return len(objects) / (time.perf_counter() - started)


def load_bucket(client, bucket: str, prefix: str, objects) -> float:
    """Put the objects into the bucket, 16 at a time; return seconds."""
    started = time.perf_counter()

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=prefix + item[0], Body=item[1])

    with concurrent.futures.ThreadPoolExecutor(LOAD_THREADS) as pool:
        for _ in pool.map(put, objects, chunksize=64):
            pass
    return time.perf_counter() - started


def windows(length: float, days: int, runs: int, seed: int) -> list[float]:
    """Return ``runs`` window starts aligned to ``length``, away from the ends."""
    rng = random.Random(seed)
    slots = int((days - 2) * DAY // length)
    first = START + DAY
    picked = rng.sample(range(slots), min(runs, slots))
    return [first + slot * length for slot in picked]


def process_cpu(pid: int | None) -> float:
    """Return the CPU seconds used so far by process ``pid``, or by this one."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of proc(5), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def time_queries(archive, keyring, length, starts, server_pid=None) -> dict:
    seconds, records, client_cpu, server_cpu = [], [], [], []
    statistics_of = getattr(archive, "statistics", None)
    requests = None
    for number, since in enumerate(starts):
        before = statistics_of() if statistics_of else None
        cpu = (process_cpu(None), process_cpu(server_pid) if server_pid else 0.0)
        started = time.perf_counter()
        results = await query_alarms(
            archive, keyring, since=since, until=since + length
        )
        seconds.append(time.perf_counter() - started)
        client_cpu.append(process_cpu(None) - cpu[0])
        if server_pid:
            server_cpu.append(process_cpu(server_pid) - cpu[1])
        records.append(len(results))
        assert all(result.verified for result in results), (
            "a record failed verification"
        )
        if number == 0 and statistics_of:
            after = statistics_of()
            requests = {
                "list": after.list_requests - before.list_requests,
                "get": after.get_requests - before.get_requests,
            }
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "runs": len(seconds),
        "records_median": statistics.median(records),
        "requests_first_run": requests,
        # CPU seconds of this process (all its threads) and of the S3 server.
        "client_cpu_median_s": statistics.median(client_cpu),
        "server_cpu_median_s": statistics.median(server_cpu) if server_cpu else None,
    }


async def run_queries(archive, keyring, args, server_pid=None) -> dict:
    hours = windows(HOUR, args.days, args.runs, args.seed + 1)
    days = windows(DAY, args.days, args.runs, args.seed + 2)
    # One warm-up query: opens the client, or fills the page cache's metadata.
    await query_alarms(archive, keyring, since=hours[0], until=hours[0] + HOUR)
    return {
        "one_hour": await time_queries(archive, keyring, HOUR, hours, server_pid),
        "one_day": await time_queries(archive, keyring, DAY, days, server_pid),
    }


def print_results(results: dict) -> None:
    print()
    print(
        "| backend | query | records | median | fastest | slowest | requests "
        "| client CPU | server CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for backend, queries in results["backends"].items():
        for name, numbers in queries.items():
            requests = numbers["requests_first_run"]
            shown = (
                f"{requests['list']} list, {requests['get']} get" if requests else "-"
            )
            cells = [
                backend,
                name.replace("_", " "),
                f"{numbers['records_median']:.0f}",
                f"{numbers['median_s'] * 1000:.0f} ms",
                f"{numbers['min_s'] * 1000:.0f} ms",
                f"{numbers['max_s'] * 1000:.0f} ms",
                shown,
                f"{numbers['client_cpu_median_s'] * 1000:.0f} ms",
                _milliseconds(numbers["server_cpu_median_s"]),
            ]
            print("| " + " | ".join(cells) + " |")


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=7, help="queries of each length")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--dir", help="folder for the archive (default: a temporary one)"
    )
    parser.add_argument(
        "--skip-s3", action="store_true", help="measure the folder only"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.days < 3:
        parser.error("--days must be at least 3")

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="bench-archive-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"alarms": args.alarms, "days": args.days, "backends": {}}
    try:
        started = time.perf_counter()
        keyring, objects = make_frames(args.alarms, args.days, args.seed)
        print(f"signed {len(objects)} alarms in {time.perf_counter() - started:.1f} s")

        folder = workdir / "archive"
        seconds = load_folder(folder, objects)
        print(f"folder: wrote {len(objects)} objects in {seconds:.1f} s")
        sample = [(f"sample/{key}", frame) for key, frame in objects[:500]]
        rate = trio.run(durable_put_rate, workdir / "durable", sample)
        results["folder_durable_puts_per_s"] = rate
        print(f"folder: {rate:.0f} durable puts/s (fsync per object, 500 objects)")
        results["backends"]["folder"] = trio.run(
            run_queries, LocalArchive(folder), keyring, args
        )

        if not args.skip_s3:
            queries, rate = measure_s3(workdir, keyring, objects, args)
            results["backends"]["s3 (moto)"] = queries
            results["s3_load_puts_per_s"] = rate
        print_results(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def measure_s3(workdir: Path, keyring, objects, args) -> tuple[dict, float]:
    """Load a moto server's bucket, time the queries; return them and the put rate."""
    from s3_server import S3Server, aws_test_environment

    from storage.s3 import S3Archive

    os.environ.update(aws_test_environment(workdir))
    server = S3Server(workdir / "moto.log")
    server.start()
    try:
        bucket = server.create_bucket("bench-archive")
        client = server.client()
        seconds = load_bucket(client, bucket, "mesh/", objects)
        rate = len(objects) / seconds
        print(f"s3: put {len(objects)} objects in {seconds:.1f} s ({rate:.0f}/s)")
        archive = S3Archive(
            parse_s3_url(f"s3://{bucket}/mesh"), endpoint_url=server.url
        )
        queries = trio.run(run_queries, archive, keyring, args, server.process.pid)
        return queries, rate
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
