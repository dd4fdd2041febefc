#!/usr/bin/env python
"""Latency and throughput of the actor under BOSS (issue: CollectorArchiver).

Starts the collector actor and the demo logger HERO as BOSS subprocesses in a private realm,
then measures:

* latency: a small run announced by ``finished``, from the moment the event is fired to the
  moment the job is journalled done (its files committed), repeated ``--latency-runs`` times;
* throughput: ``--burst`` runs written beforehand, announced back to back by ``--loggers``
  logger HEROs at once, until all are done; and the actor's resident memory before and after.

Usage::

    python benchmarks/actor_bench.py --burst 100 --records 2000
    python benchmarks/actor_bench.py --burst 500 --loggers 5 --records 200
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import BossProcess, load_config, wait_until


def journal_done(state: Path) -> dict[str, float]:
    """Done (or failed) jobs: path -> time the job was last updated."""
    db = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT path, updated, state FROM jobs WHERE state IN ('done', 'failed')").fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        db.close()
    failed = [r[0] for r in rows if r[2] == "failed"]
    if failed:
        raise RuntimeError(f"jobs failed: {failed[:3]}")
    return {r[0]: r[1] for r in rows}


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (BOSS runs the HERO in a child)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{current}/status").read_text()).group(1))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, AttributeError):
            continue
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=100, help="runs announced back to back")
    parser.add_argument("--records", type=int, default=2000, help="records per run")
    parser.add_argument("--latency-runs", type=int, default=10, help="runs announced one at a time")
    parser.add_argument("--loggers", type=int, default=1, help="logger HEROs announcing the burst together")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hc-actor-bench-") as tmp:
        work = args.workdir or Path(tmp)
        runs, out, state = work / "runs", work / "out", work / "state"
        print(f"writing {args.burst + args.latency_runs} runs of {args.records} records ...", flush=True)
        paths = [
            write_simulated_run(runs / f"run-{i:04d}", records=args.records, seed=i, labels={"run": i})["path"]
            for i in range(args.burst + args.latency_runs)
        ]
        realm = f"hc-bench-{uuid.uuid4().hex[:8]}"
        collector = BossProcess(
            load_config(
                "collector.json",
                {
                    "default_metadata": {"output_root": str(out)},
                    "allowed_roots": [str(runs)],
                    "state_dir": str(state),
                },
            ),
            realm,
            work / "boss",
        )
        loggers = []
        for i in range(args.loggers):
            config = load_config("demo_logger.json", {"root": str(runs)})
            config["_id"] = f"demo-logger-{i}"
            loggers.append(BossProcess(config, realm, work / "boss"))
        try:
            collector.start()
            for logger in loggers:
                logger.start()
            collector.remote()
            heroes = [logger.remote() for logger in loggers]
            hero = heroes[0]

            latencies = []
            for path in paths[: args.latency_runs]:
                fired = time.time()
                hero.announce({"path": path})
                done = wait_until(lambda p=path: journal_done(state).get(p), 60, f"job for {path}", interval=0.002)
                latencies.append(done - fired)

            burst = paths[args.latency_runs :]
            memory_before = rss_mib(collector.process.pid)
            shares = [burst[i :: len(heroes)] for i in range(len(heroes))]
            senders = [threading.Thread(target=h.announce_all, args=(share,)) for h, share in zip(heroes, shares)]
            start = time.time()
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            wait_until(lambda: len(journal_done(state)) >= len(paths), 600, "the burst", interval=0.01)
            finished = max(journal_done(state)[p] for p in burst)
            elapsed = finished - start
            memory_after = rss_mib(collector.process.pid)
        finally:
            for process in [*loggers, collector]:
                process.stop()

        print(
            f"latency event -> committed files, {args.latency_runs} runs of {args.records} records: "
            f"median {statistics.median(latencies) * 1000:.1f} ms, "
            f"min {min(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
        )
        print(
            f"burst of {len(burst)} events from {len(heroes)} logger(s): all collected in {elapsed:.2f} s "
            f"({len(burst) / elapsed:.1f} runs/s, {len(burst) * args.records / elapsed:,.0f} records/s)"
        )
        print(
            f"actor memory (BOSS + worker RSS): {memory_before:.1f} MiB before the burst, {memory_after:.1f} MiB after"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
