#!/usr/bin/env python
"""Benchmark the collection service: a burst of runs with 1 and with N workers, and the scan.

One run of this script:

1. writes ``--runs`` runs of ``--records`` records each (reused from ``--workdir`` when the
   parameters match);
2. for each worker count in ``--workers``, starts a fresh ``CollectionService`` (new journal,
   new output folder), submits every run at once (a burst) and times until all are collected;
   prints runs/s, records/s and the ratio to the first worker count, side by side, and the
   journal's durable commits per job (the workers' transitions share commits: group commit),
   and the cores the burst kept busy (process CPU seconds over wall seconds): the machine's
   cores over one worker's figure bound what more workers can gain;
3. decodes the same runs with the decoder alone (``Collector.batches`` on one thread, no output,
   no journal), warm, and prints its records/s and each worker count's share of it;
4. builds ``--scan-dirs`` finished run directories (``streams/`` and ``_DONE``, two levels
   deep) and times one catch-up scan that journals all of them, then a second scan that
   finds nothing new.

Examples::

    python benchmarks/service_bench.py                       # 200 runs x 20k records, workers 1 and 2
    python benchmarks/service_bench.py --runs 50 --records 5000 --scan-dirs 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_runs(folder: Path, runs: int, records: int) -> list[Path]:
    """The runs, written once per parameter set."""
    from herocollector.actor.demo import write_simulated_run

    stamp = folder / "bench_runs.json"
    wanted = {"runs": runs, "records": records, "version": 1}
    paths = [folder / "runs" / f"run-{i:04d}" for i in range(runs)]
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and all((p / "_DONE").exists() for p in paths):
        return paths
    shutil.rmtree(folder / "runs", ignore_errors=True)
    for i, path in enumerate(paths):
        write_simulated_run(path, records=records, entities=4, seed=i)
    stamp.write_text(json.dumps(wanted))
    return paths


def burst(paths: list[Path], workers: int, scratch: Path, decode_threads: int | None) -> tuple[float, float, int]:
    """Seconds to collect every run, announced at once, with ``workers`` workers; CPU seconds; the journal's commits.

    The CPU seconds are this process's, all threads: divided by the seconds, the cores the burst
    kept busy. On a machine with ``C`` cores, ``C`` divided by one worker's figure bounds what more
    workers can gain.
    """
    from herocollector.config import ServiceConfig
    from herocollector.journal.sqlite import JobState
    from herocollector.service.core import CollectionService

    state, out = scratch / f"state-{workers}", scratch / f"out-{workers}"
    config = ServiceConfig.from_arguments(
        save_template="{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow",
        output_root=str(out),
        allowed_roots=[str(paths[0].parent)],
        state_dir=str(state),
        workers=workers,
        scan_interval=None,
        decode_threads=decode_threads,
    )
    with CollectionService(config) as service:
        started, cpu = time.perf_counter(), time.process_time()
        for path in paths:
            service.submit("bench", str(path))
        if not service.wait_idle(timeout=3600, interval=0.005):
            raise SystemExit("the burst did not finish")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        counts = service.journal.counts()
        group = getattr(service.journal, "_group", None)
        commits = -1 if group is None else int(group.commits)
    if counts[JobState.DONE.value] != len(paths):
        raise SystemExit(f"not every run was collected: {counts}")
    shutil.rmtree(state)
    shutil.rmtree(out)
    shutil.rmtree(config.manifest_location, ignore_errors=True)  # or the next burst adopts or replaces them
    return seconds, cpu, commits


def decode_alone(paths: list[Path]) -> float:
    """Seconds to decode every run with the decoder alone, one run after the other on one thread (warm)."""
    from herocollector.collector import Collector

    def rows(path: Path) -> int:
        return sum(batch.num_rows for batch in Collector([path]).batches(threads=1) if batch is not None)

    rows(paths[0])  # the kernels loaded, the first run's files in the page cache like the others'
    started = time.perf_counter()
    for path in paths:
        rows(path)
    return time.perf_counter() - started


def scan(count: int, scratch: Path) -> tuple[float, float, int]:
    """Seconds of a first scan over ``count`` finished runs (journals all) and of a second one."""
    import threading

    from herocollector.journal.sqlite import SqliteJournal
    from herocollector.service.scan import Scanner

    root = scratch / "scan-root"
    for i in range(count):
        run = root / f"campaign-{i // 1000:02d}" / f"run-{i:05d}"
        (run / "streams").mkdir(parents=True)
        (run / "_DONE").touch()
    journal = SqliteJournal(scratch / "scan.sqlite3")
    try:
        scanner = Scanner(journal, [root], 3, threading.Event())
        first = scanner.scan()
        second = scanner.scan()
    finally:
        journal.close()
    shutil.rmtree(root)
    return first.seconds, second.seconds, first.journalled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--decode-threads", type=int, default=None, help="the service's decode_threads (default: its own, the cores)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="bursts per worker count; the best is reported")
    parser.add_argument("--scan-dirs", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=HERE / "_data" / "service")
    args = parser.parse_args(argv)
    logging.getLogger("heros").setLevel(logging.WARNING)

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"writing/reusing {args.runs} runs x {args.records} records in {args.workdir} ...", flush=True)
    paths = build_runs(args.workdir, args.runs, args.records)
    total = args.runs * args.records
    with tempfile.TemporaryDirectory(prefix="hc-service-bench-") as tmp:
        scratch = Path(tmp)
        best: dict[int, float] = {}
        cores: dict[int, float] = {}
        commits: dict[int, int] = {}
        alone = float("inf")
        for _ in range(args.repeat):
            for workers in args.workers:  # interleaved, so all see the same machine state
                seconds, cpu, made = burst(paths, workers, scratch, args.decode_threads)
                if seconds < best.get(workers, float("inf")):
                    best[workers], cores[workers], commits[workers] = seconds, cpu / seconds, made
            alone = min(alone, decode_alone(paths))
        base_workers = args.workers[0]
        base = best[base_workers]
        print(f"\nburst of {args.runs} runs x {args.records:,} records (best of {args.repeat}):")
        for workers in args.workers:
            seconds = best[workers]
            print(
                f"  workers={workers}: {seconds:7.2f} s  {args.runs / seconds:7.1f} runs/s  "
                f"{total / seconds / 1e6:6.2f} M records/s  ratio {base / seconds:4.2f}x  "
                f"share of the decoder alone {alone / seconds:4.2f}  "
                f"journal commits/job {commits[workers] / args.runs:4.2f}  "
                f"cores busy {cores[workers]:4.2f}"
            )
        print(
            f"  decoder alone (one thread, no output, no journal): {alone:7.2f} s  "
            f"{total / alone / 1e6:6.2f} M records/s"
        )
        cpus = os.cpu_count() or 1
        print(
            f"  on {cpus} cores, {args.workers[0]} worker(s) keeping {cores[base_workers]:.2f} busy: "
            f"more workers can gain at most {cpus / cores[base_workers]:.2f}x"
        )
        if args.scan_dirs:
            first, second, journalled = scan(args.scan_dirs, scratch)
            print(
                f"\ncatch-up scan of {args.scan_dirs:,} finished run directories: first {first:.3f} s "
                f"({journalled:,} journalled), second {second:.3f} s (nothing new)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
