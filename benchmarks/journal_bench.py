#!/usr/bin/env python
"""Benchmark the job journal at scale, on SQLite and on PostgreSQL.

For each size in ``--sizes`` (done jobs, each with one output; ``--trash`` of them cleaned with
their segments in the trash) and each backend, it measures:

* **open**: opening the journal on the filled database and ``resume()``, what a service does
  at start;
* **status**: the journal queries of ``CollectionService.status()`` with bounded lists:
  ``counts()``, ``in_trash(limit=20)``, ``trash_count()`` and ``recent(20)`` (median of
  ``--repeat``); and, for comparison, the unbounded ``in_trash()`` the status used before;
* **submit**: the latency of ``submit()`` of new runs (median, 99th percentile, max of
  ``--submits``) while another thread pages through every done job with
  ``done_jobs_page(after, 500)``, as a cleanup of every run does (the pager never pauses, so
  it also competes for the GIL: the worst case; ``--pager-yields`` lets it give up the GIL
  between pages); ``idle p50`` is the median with no pager;
* **page**: the longest single ``done_jobs_page`` call of that walk.

With ``--protocol-jobs N`` it measures instead the journal's share of a burst (#17): ``N`` jobs
submitted while 1 and 2 worker threads take, reserve three outputs and finish them, with the
protocol before (one transaction per output reservation, five lease renewals per job, one
commit per transition) and now (``claim_outputs`` once, renewals only on a shared journal and
once per job, transitions that come together share a commit), alternating, side by side.

The jobs are written straight into the tables (the API would take minutes for 100k fsynced
transactions); the journal creates its schema first. PostgreSQL is the throw-away server of
:mod:`herocollector.testing.servers`, started and stopped by this script. With ``--explain``
the query plans of the service's queries are printed.

Examples::

    python benchmarks/journal_bench.py                        # 10k and 100k, both backends
    python benchmarks/journal_bench.py --sizes 10000 --backends sqlite --explain
    python benchmarks/journal_bench.py --protocol-jobs 200 --backends sqlite postgres
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from herocollector.journal.base import Journal  # noqa: E402
from herocollector.journal.postgres import PgJournal  # noqa: E402
from herocollector.journal.sqlite import SqliteJournal  # noqa: E402

PAGE = 500


def fill_sqlite(file: Path, done: int, trash: int) -> None:
    """``done`` done jobs (the last ``trash`` of them cleaned, in the trash), one output each."""
    SqliteJournal(file).close()  # the schema and its indexes
    import sqlite3

    now = time.time()
    db = sqlite3.connect(file)
    with db:
        db.executemany(
            "INSERT INTO jobs (id, path, source, metadata, state, attempts, rows, created, updated, trash_until, token) "
            "VALUES (?, ?, 'bench', ?, ?, 1, 100, ?, ?, ?, 1)",
            (
                (
                    i,
                    f"/data/runs/run-{i:07d}",
                    json.dumps({"path": f"/data/runs/run-{i:07d}", "experiment": "bench"}),
                    "cleaned" if i > done - trash else "done",
                    now,
                    now,
                    now + 86400 + i if i > done - trash else None,
                )
                for i in range(1, done + 1)
            ),
        )
        db.executemany(
            "INSERT INTO outputs (path, job_id, rows) VALUES (?, ?, 100)",
            ((f"/out/run-{i:07d}/stream.arrow", i) for i in range(1, done + 1)),
        )
    db.execute("ANALYZE")
    db.close()


def fill_postgres(url: str, done: int, trash: int) -> None:
    """As :func:`fill_sqlite`, on PostgreSQL (server-side ``generate_series``)."""
    PgJournal(url).close()
    import psycopg

    now = time.time()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "INSERT INTO herocollector_jobs (path, source, metadata, state, attempts, rows, created, updated, "
            "trash_until, token) "
            "SELECT format('/data/runs/run-%%s', lpad(i::text, 7, '0')), 'bench', "
            "jsonb_build_object('path', format('/data/runs/run-%%s', lpad(i::text, 7, '0')), 'experiment', 'bench'), "
            "CASE WHEN i > %(cut)s THEN 'cleaned' ELSE 'done' END, 1, 100, %(now)s, %(now)s, "
            "CASE WHEN i > %(cut)s THEN %(now)s + 86400 + i ELSE NULL END, 1 "
            "FROM generate_series(1, %(n)s) AS i",
            {"n": done, "cut": done - trash, "now": now},
        )
        db.execute(
            "INSERT INTO herocollector_outputs (path, job_id, rows) "
            "SELECT format('/out/run-%s/stream.arrow', id), id, 100 FROM herocollector_jobs"
        )
        db.execute("VACUUM ANALYZE herocollector_jobs")
        db.execute("VACUUM ANALYZE herocollector_outputs")


def timed(action: Callable[[], Any]) -> float:
    """Seconds ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def status_queries(journal: Journal) -> None:
    """The journal queries of ``CollectionService.status()``, with bounded lists."""
    journal.counts()
    journal.in_trash(limit=20)
    journal.trash_count()
    journal.recent(20)


def measure(
    open_journal: Callable[[], Journal], done: int, submits: int, repeat: int, yielding: bool = False
) -> dict[str, float]:
    """Open, status and submit-while-paging figures of one filled journal."""
    start = time.perf_counter()
    journal = open_journal()
    journal.resume(owner="bench")
    opened = time.perf_counter() - start
    try:
        status = statistics.median(timed(lambda: status_queries(journal)) for _ in range(repeat))
        unbounded = timed(journal.in_trash)

        idle = []
        for i in range(submits):
            path = f"/data/runs/idle-{i:05d}"
            idle.append(timed(lambda p=path: journal.submit(p, "bench", {"path": p})))  # type: ignore[misc]

        walks = 0
        longest_page = 0.0
        seen = 0
        stop = threading.Event()

        def walk() -> None:
            nonlocal walks, longest_page, seen
            while not stop.is_set():
                after = 0
                while not stop.is_set():
                    t0 = time.perf_counter()
                    page = journal.done_jobs_page(after, PAGE)
                    longest_page = max(longest_page, time.perf_counter() - t0)
                    if not page:
                        break
                    seen += len(page)
                    after = page[-1].id
                    if yielding:
                        time.sleep(0)  # as a cleanup does between pages: its renames give up the GIL
                walks += 1

        pager = threading.Thread(target=walk, name="pager")
        pager.start()
        latencies: list[float] = []
        try:
            for i in range(submits):
                path = f"/data/runs/new-{i:05d}"
                latencies.append(timed(lambda p=path: journal.submit(p, "bench", {"path": p})))  # type: ignore[misc]
        finally:
            stop.set()
            pager.join()
        latencies.sort()
        return {
            "open": opened,
            "status": status,
            "in_trash_all": unbounded,
            "idle_p50": statistics.median(idle),
            "submit_p50": statistics.median(latencies),
            "submit_p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "submit_max": latencies[-1],
            "page_max": longest_page,
            "paged_jobs": float(seen),
        }
    finally:
        journal.close()


def explain_sqlite(file: Path) -> None:
    """Print SQLite's plans of the service's queries."""
    import sqlite3

    db = sqlite3.connect(file)
    queries = {
        "take_due": "SELECT id FROM jobs WHERE state = 'pending' AND COALESCE(next_attempt, 0) <= 1e12 "
        "ORDER BY COALESCE(next_attempt, 0), id LIMIT 1",
        "next_due": "SELECT MIN(COALESCE(next_attempt, 0)) FROM jobs WHERE state = 'pending'",
        "counts": "SELECT state, COUNT(*) FROM jobs GROUP BY state",
        "recent": "SELECT * FROM jobs ORDER BY id DESC LIMIT 20",
        "outputs of jobs": "SELECT job_id, path, rows FROM outputs WHERE job_id IN (1, 2, 3) ORDER BY path",
        "done page": "SELECT * FROM jobs WHERE state = 'done' AND id > 5 ORDER BY id LIMIT 500",
        "in_trash": "SELECT * FROM jobs WHERE trash_until IS NOT NULL ORDER BY trash_until, id LIMIT 20",
        "trash_count": "SELECT COUNT(*) FROM jobs WHERE trash_until IS NOT NULL",
        "by_path": "SELECT * FROM jobs WHERE path = '/x'",
        "owner_of": "SELECT j.* FROM jobs j JOIN outputs o ON o.job_id = j.id WHERE o.path = '/x'",
        "resume": "SELECT * FROM jobs WHERE state IN ('pending', 'waiting') ORDER BY id",
    }
    for name, sql in queries.items():
        plan = "; ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        print(f"  sqlite   {name:16s} {plan}")
    db.close()


def explain_postgres(url: str) -> None:
    """Print PostgreSQL's plans of the service's queries."""
    import psycopg

    queries = {
        "take_due": "SELECT j.id FROM herocollector_jobs j WHERE (j.state = 'pending' AND "
        "COALESCE(j.next_attempt, 0) <= 1e12) OR (j.state = 'running' AND COALESCE(j.lease_until, 0) < 1e12) "
        "ORDER BY COALESCE(j.next_attempt, 0), j.id LIMIT 1",
        "counts": "SELECT state, COUNT(*) FROM herocollector_jobs GROUP BY state",
        "recent": "SELECT * FROM herocollector_jobs ORDER BY id DESC LIMIT 20",
        "outputs of jobs": "SELECT job_id, path, rows FROM herocollector_outputs WHERE job_id = ANY('{1,2,3}')",
        "done page": "SELECT * FROM herocollector_jobs WHERE state = 'done' AND id > 5 ORDER BY id LIMIT 500",
        "in_trash": "SELECT * FROM herocollector_jobs WHERE trash_until IS NOT NULL ORDER BY trash_until, id LIMIT 20",
        "trash_count": "SELECT COUNT(*) FROM herocollector_jobs WHERE trash_until IS NOT NULL",
        "by_path": "SELECT * FROM herocollector_jobs WHERE path = '/x'",
    }
    with psycopg.connect(url, autocommit=True) as db:
        for name, sql in queries.items():
            plan = " | ".join(row[0].strip() for row in db.execute(f"EXPLAIN {sql}".encode()))
            print(f"  postgres {name:16s} {plan}")


def protocol_burst(open_journal: Callable[[], Any], jobs: int, workers: int, before: bool) -> tuple[float, int]:
    """Seconds for ``jobs`` jobs through the journal (submitted while ``workers`` threads work), and its commits."""
    journal = open_journal()
    if before:
        journal._group._max_batch = 1  # one commit per transition, as before group commit
    outputs = [f"/out/{{job}}/{name}.arrow" for name in ("stock", "orders", "backlog")]
    started = time.perf_counter()
    commits = journal._group.commits

    def submit() -> None:
        for i in range(jobs):
            journal.submit(f"/data/runs/run-{i:06d}", "bench", {})
            submitted.set()

    def work() -> None:
        while True:
            job = journal.take_due(owner="bench", lease=30.0)
            if job is None:
                if submitter_done.is_set() and journal.next_due() is None:
                    return
                submitted.wait(0.001)  # as an idle worker waits for a wake-up
                continue
            paths = [p.format(job=job.id) for p in outputs]
            if before:
                for path in paths:
                    journal.claim_output(job.id, path)
                for _ in range(5):  # before each of 3 publishes, the manifest, and after the write
                    journal.renew(job.id, job.token, 30.0)
            else:
                journal.claim_outputs(job.id, paths)
                if journal.shared:
                    journal.renew(job.id, job.token, 30.0)
            journal.finish(job.id, dict.fromkeys(paths, 20_000), token=job.token)

    submitter_done, submitted = threading.Event(), threading.Event()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    submit()
    submitter_done.set()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    commits = journal._group.commits - commits
    if journal.counts()["done"] != jobs:
        raise SystemExit(f"not every job was done: {journal.counts()}")
    journal.close()
    return seconds, commits


def compare_protocols(args: argparse.Namespace, scratch: Path, server: Any) -> None:
    """Print the protocol before and now, per backend and worker count, measured alternately."""
    print(f"journal work of a burst of {args.protocol_jobs} jobs (3 outputs each), best of {args.repeat_protocol}:")
    for backend in args.backends:
        best: dict[tuple[int, bool], tuple[float, int]] = {}
        for attempt in range(args.repeat_protocol):
            for workers in (1, 2):
                for before in (True, False):
                    factory: Callable[[], Any]
                    if backend == "sqlite":
                        factory = partial(SqliteJournal, scratch / f"protocol-{attempt}-{workers}-{before}.sqlite3")
                    else:
                        factory = partial(PgJournal, server.database())
                    result = protocol_burst(factory, args.protocol_jobs, workers, before)
                    if result[0] < best.get((workers, before), (float("inf"), 0))[0]:
                        best[(workers, before)] = result
        for workers in (1, 2):
            (old, old_commits), (new, new_commits) = best[(workers, True)], best[(workers, False)]
            print(
                f"  {backend:8s} workers={workers}: before {args.protocol_jobs / old:8.1f} jobs/s "
                f"({old_commits / args.protocol_jobs:5.2f} commits/job)  now {args.protocol_jobs / new:8.1f} jobs/s "
                f"({new_commits / args.protocol_jobs:5.2f} commits/job)  speed-up {old / new:5.2f}x"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="done jobs")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--trash", type=float, default=0.01, help="share of the jobs cleaned and in the trash")
    parser.add_argument("--submits", type=int, default=200, help="submits timed while paging")
    parser.add_argument("--repeat", type=int, default=20, help="status repetitions (median)")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    parser.add_argument(
        "--pager-yields", action="store_true", help="the pager gives up the GIL between pages, as a real cleanup does"
    )
    parser.add_argument("--protocol-jobs", type=int, default=0, help="compare the per-job protocol before and now")
    parser.add_argument("--repeat-protocol", type=int, default=2, help="bursts per protocol comparison (the best)")
    args = parser.parse_args()

    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="hc-journal-bench-") as scratch:
        server: Any = None
        if "postgres" in args.backends:
            from herocollector.testing.servers import PostgresTestServer

            (Path(scratch) / "pg").mkdir()
            server = PostgresTestServer(Path(scratch) / "pg").start()
        try:
            if args.protocol_jobs:
                compare_protocols(args, Path(scratch), server)
                return 0
            for size in args.sizes:
                trash = int(size * args.trash)
                for backend in args.backends:
                    if backend == "sqlite":
                        file = Path(scratch) / f"journal-{size}.sqlite3"
                        fill_sqlite(file, size, trash)
                        if args.explain:
                            explain_sqlite(file)
                        result = measure(
                            partial(SqliteJournal, file), size, args.submits, args.repeat, args.pager_yields
                        )
                    else:
                        url = server.database()
                        fill_postgres(url, size, trash)
                        if args.explain:
                            explain_postgres(url)
                        result = measure(partial(PgJournal, url), size, args.submits, args.repeat, args.pager_yields)
                    rows.append((backend, size, result))
                    print(f"{backend} {size}: done", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()

    ms = 1000.0
    header = (
        f"{'backend':9s} {'done jobs':>10s} {'open ms':>9s} {'status ms':>10s} {'in_trash() ms':>14s} "
        f"{'idle p50':>9s} {'submit p50':>11s} {'p99 ms':>8s} {'max ms':>8s} {'page max ms':>12s} {'paged':>9s}"
    )
    print(header)
    print("-" * len(header))
    for backend, size, r in rows:
        print(
            f"{backend:9s} {size:>10d} {r['open'] * ms:>9.1f} {r['status'] * ms:>10.2f} {r['in_trash_all'] * ms:>14.1f} "
            f"{r['idle_p50'] * ms:>9.2f} {r['submit_p50'] * ms:>11.2f} {r['submit_p99'] * ms:>8.2f} {r['submit_max'] * ms:>8.2f} "
            f"{r['page_max'] * ms:>12.2f} {int(r['paged_jobs']):>9d}"
        )
    print("targets at 100k: open <= 1000 ms, status <= 50 ms, submit <= 10 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
