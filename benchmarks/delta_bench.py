#!/usr/bin/env python
"""Benchmark ``format: "delta"``: runs/s into one Delta table against Parquet files, commit latency, compaction.

One run of this script:

1. writes ``--runs`` runs of ``--records`` records each, as ``service_bench.py`` does (and
   reuses its runs in ``--workdir`` when the parameters match);
2. for each worker count in ``--workers``, and for each of Parquet files
   (``{{ logger_name }}/{{ measure }}.parquet``, one file per stream group and a manifest per run)
   and one Delta table (``measurements``, one commit per run), starts a fresh
   ``CollectionService``, submits every run at once (a burst) and times until all are collected;
   the two formats are measured side by side, interleaved, in the same process;
3. times every ``commit_run`` call of the Delta bursts (the commit to the table, from the staged
   run to the new version) and prints their median and 95th percentile;
4. counts the data files of the last Delta table, compacts it
   (:func:`herocollector.output.delta_upkeep.compact`), counts them again, and vacuums it with the
   default retention of 168 hours (which deletes nothing yet: the replaced files are a reader's
   within the retention).

Compaction by the service is off during the bursts (``compact_interval: null``), so it does not
mix into the runs/s.

Examples::

    python benchmarks/delta_bench.py                        # 200 runs x 20k records, workers 1 and 2
    python benchmarks/delta_bench.py --runs 50 --records 5000 --workers 1
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from service_bench import build_runs  # noqa: E402 - the same runs as the service benchmark

COLUMNS = ["experiment", "measure"]
FORMATS = ("parquet", "delta")


class CommitTimer:
    """Times every ``commit_run`` the table committer makes (wrapped where it looks it up)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CommitTimer:
        from herocollector.service import table_commit

        self._module = table_commit
        self._original = original = getattr(table_commit, "commit_run")  # noqa: B009 - the name it looks up

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.seconds.append(elapsed)

        setattr(table_commit, "commit_run", timed)  # noqa: B010
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self._module, "commit_run", self._original)  # noqa: B010


def burst(paths: list[Path], fmt: str, workers: int, scratch: Path) -> tuple[float, Path]:
    """Seconds to collect every run, announced at once, with ``workers`` workers, into ``fmt``."""
    from herocollector.config import ServiceConfig
    from herocollector.journal.sqlite import JobState
    from herocollector.service.core import CollectionService

    state, out = scratch / f"state-{fmt}-{workers}", scratch / f"out-{fmt}-{workers}"
    template = (
        "{{ output_root }}/measurements"
        if fmt == "delta"
        else "{{ output_root }}/{{ logger_name }}/{{ measure }}.parquet"
    )
    config = ServiceConfig.from_arguments(
        save_template=template,
        output_root=str(out),
        format=fmt,
        columns=COLUMNS,
        allowed_roots=[str(paths[0].parent)],
        state_dir=str(state),
        workers=workers,
        scan_interval=None,
        compact_interval=None,
    )
    with CollectionService(config) as service:
        started = time.perf_counter()
        for path in paths:
            service.submit("bench", str(path))
        if not service.wait_idle(timeout=3600, interval=0.005):
            raise SystemExit("the burst did not finish")
        seconds = time.perf_counter() - started
        counts = service.journal.counts()
    if counts[JobState.DONE.value] != len(paths):
        raise SystemExit(f"{fmt}: not every run was collected: {counts}")
    shutil.rmtree(state)
    return seconds, out


def compaction(table: Path) -> dict[str, Any]:
    """The table's files before and after a compaction, and what it and a vacuum took."""
    from deltalake import DeltaTable

    from herocollector.output.delta_upkeep import compact, vacuum

    rows_before = DeltaTable(str(table)).to_pyarrow_dataset().count_rows()
    started = time.perf_counter()
    result = compact(str(table), {}, actor="delta_bench")
    compact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cleaned = vacuum(str(table), 168, {}, actor="delta_bench")
    vacuum_seconds = time.perf_counter() - started
    after = DeltaTable(str(table))
    if after.to_pyarrow_dataset().count_rows() != rows_before:
        raise SystemExit("compaction changed the row count")
    return {
        "files_before": result.files_before,
        "files_after": result.files_after,
        "rows": result.rows,
        "compact_seconds": compact_seconds,
        "vacuum_seconds": vacuum_seconds,
        "vacuumed": len(cleaned.removed),
        "parquet_files_on_disk": sum(1 for p in table.rglob("*.parquet") if "_delta_log" not in p.parts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeat", type=int, default=1, help="bursts per format and worker count; the best is reported"
    )
    parser.add_argument("--workdir", type=Path, default=HERE / "_data" / "service")
    args = parser.parse_args(argv)
    logging.getLogger("heros").setLevel(logging.WARNING)
    logging.getLogger("herocollector").setLevel(logging.WARNING)

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"writing/reusing {args.runs} runs x {args.records} records in {args.workdir} ...", flush=True)
    paths = build_runs(args.workdir, args.runs, args.records)
    total = args.runs * args.records
    with tempfile.TemporaryDirectory(prefix="hc-delta-bench-") as tmp:
        scratch = Path(tmp)
        best: dict[tuple[str, int], float] = {}
        latencies: dict[int, list[float]] = {}
        last_table: Path | None = None
        for _ in range(args.repeat):
            for workers in args.workers:
                for fmt in FORMATS:  # interleaved, so both formats see the same machine state
                    if fmt == "delta":
                        with CommitTimer() as timer:
                            seconds, out = burst(paths, fmt, workers, scratch)
                        latencies.setdefault(workers, []).extend(timer.seconds)
                        if last_table is not None:
                            shutil.rmtree(last_table.parent)
                        last_table = out / "measurements"
                    else:
                        seconds, out = burst(paths, fmt, workers, scratch)
                        shutil.rmtree(out)
                    key = (fmt, workers)
                    best[key] = min(best.get(key, seconds), seconds)
        print(f"\nburst of {args.runs} runs x {args.records:,} records (best of {args.repeat}):")
        for workers in args.workers:
            parquet = best[("parquet", workers)]
            for fmt in FORMATS:
                seconds = best[(fmt, workers)]
                print(
                    f"  workers={workers} {fmt:8s}: {seconds:7.2f} s  {args.runs / seconds:7.1f} runs/s  "
                    f"{total / seconds / 1e6:6.2f} M records/s  vs parquet {parquet / seconds:4.2f}x"
                )
        print("\ncommit_run latency (one commit per run into one table):")
        for workers, times in latencies.items():
            ordered = sorted(times)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            print(
                f"  workers={workers}: {len(times)} commits, median {statistics.median(times) * 1000:6.1f} ms, "
                f"p95 {p95 * 1000:6.1f} ms, max {ordered[-1] * 1000:6.1f} ms"
            )
        if last_table is not None:
            found = compaction(last_table)
            print(
                f"\ncompaction of the table ({found['rows']:,} rows): {found['files_before']} data files before, "
                f"{found['files_after']} after ({found['compact_seconds']:.2f} s); vacuum (168 h) "
                f"{found['vacuum_seconds']:.2f} s, {found['vacuumed']} deleted, {found['parquet_files_on_disk']} "
                "data files stay on disk for readers of older versions"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
