#!/usr/bin/env python
"""Benchmark following a run: the CPU time of reading it in N increments against reading it once.

One run of this script:

1. writes one run of ``--records`` records with the real ``DataLogger`` (rotated every
   ``--rotate-mb`` MB) into ``--workdir`` (reused when the parameters match);
2. reads it once, as a collection at ``_DONE`` does: ``scan_run`` + ``run_batches`` on one
   thread, every batch consumed;
3. for each increment count in ``--increments``: copies the run's streams and appends its
   segment bytes to a fresh copy in that many steps (cut at arbitrary bytes, so most steps end
   in a torn frame), and after each step does what a follower does: ``scan_run`` +
   ``follow_batches`` from the last cursor, every batch consumed; the run is done at the last step.

Only the reads are timed (``time.process_time``: the CPU time of every thread of the process),
not the appending. Each measurement is repeated ``--repeat`` times; the median is reported, with
the ratio to the one-shot read, the bytes decoded per increment (median and largest), and a check
that the increments' rows add up to the one-shot read's.

Examples::

    python benchmarks/follow_bench.py                          # 400k records (about 14 MB), 7, 14 and 70 increments
    python benchmarks/follow_bench.py --records 100000 --increments 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(path: Path, records: int, rotate_mb: float, seed: int = 3) -> None:
    """A run of ``records`` records over 8 streams, written by the real logger."""
    import data_logger

    rng = np.random.default_rng(seed)
    logger = data_logger.DataLogger(path, rotate_bytes=int(rotate_mb * (1 << 20)))
    try:
        ids = [
            logger.register_stream(
                {"experiment": "bench", "measure": f"m{i % 4}", "entity": f"node-{i}"},
                epoch_scale=1e-3,
                value_scale=1e-4,
            )
            for i in range(8)
        ]
        epochs = dict.fromkeys(ids, 0.0)
        for _ in range(records):
            sid = ids[int(rng.integers(0, len(ids)))]
            epochs[sid] += float(rng.exponential(0.5))
            n = int(rng.integers(1, 9))
            logger.record(sid, epochs[sid], np.sort(rng.choice(4096, n, replace=False)), rng.normal(0, 10, n))
    finally:
        logger.close()


def the_run(workdir: Path, records: int, rotate_mb: float) -> Path:
    key = f"{records}-{rotate_mb}"
    path = workdir / f"follow-run-{key}"
    if not (path / "_DONE").exists():
        shutil.rmtree(path, ignore_errors=True)
        print(f"writing a run of {records} records ...", flush=True)
        build(path, records, rotate_mb)
    return path


def read_once(path: Path) -> tuple[float, int]:
    from herocollector.output.batches import output_schema, run_batches, scan_run

    start = time.process_time()
    streams, inventory = scan_run(path)
    schema = output_schema(streams, ["experiment", "measure"])
    rows = sum(b.num_rows for b in run_batches(path, streams, streams, schema, inventory=inventory, threads=1))
    return time.process_time() - start, rows


def read_in_increments(path: Path, steps: int, folder: Path) -> tuple[float, int, list[int]]:
    """CPU seconds of the reads, rows, and the bytes each read decoded."""
    from herocollector.decode.follow import START
    from herocollector.output.batches import follow_batches, output_schema, scan_run

    copy = folder / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    shutil.copytree(path / "streams", copy / "streams")
    files = [(p.name, p.read_bytes()) for p in sorted(path.glob("*.seg.zst"))]
    total = sum(len(d) for _, d in files)
    cuts = [total * (i + 1) // steps for i in range(steps)]
    cursor, rows, seconds, sizes, written = START, 0, 0.0, [], 0
    for step, upto in enumerate(cuts):
        at = 0
        for name, data in files:  # append as the logger does (a new segment once the last is full)
            lo, hi = at, at + len(data)
            at = hi
            if upto <= lo and lo > 0:
                break
            with open(copy / name, "ab") as fh:
                fh.write(data[max(written, lo) - lo : max(min(upto, hi) - lo, 0)])
        written = upto
        done = step == steps - 1
        if done:
            (copy / "_DONE").touch()
        start = time.process_time()
        streams, inventory = scan_run(copy)
        schema = output_schema(streams, ["experiment", "measure"])
        read = follow_batches(copy, streams, streams, schema, cursor, done=done, inventory=inventory)
        rows += sum(b.num_rows for b in read.batches)
        seconds += time.process_time() - start
        sizes.append(read.bytes)
        cursor = read.cursor
    if not read.complete or sum(sizes) != total:
        raise SystemExit(f"the increments did not read the whole run: {sum(sizes)} of {total} bytes")
    return seconds, rows, sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--rotate-mb", type=float, default=4.0)
    parser.add_argument("--increments", type=int, nargs="+", default=[7, 14, 70])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "herocollector-bench")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = the_run(args.workdir, args.records, args.rotate_mb)
    size = sum(p.stat().st_size for p in path.glob("*.seg.zst"))
    read_once(path)  # warm: the kernels loaded, the files in the page cache
    once = [read_once(path) for _ in range(args.repeat)]
    base, rows = statistics.median(s for s, _ in once), once[0][1]
    results = {"records": args.records, "segment_bytes": size, "once_cpu_s": base, "increments": {}}
    print(f"run: {rows} rows, {size / 1e6:.1f} MB in {len(list(path.glob('*.seg.zst')))} segments")
    print(f"once:            {base:8.3f} s CPU")
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        for steps in args.increments:
            runs = [read_in_increments(path, steps, Path(folder)) for _ in range(args.repeat)]
            seconds = statistics.median(s for s, _, _ in runs)
            if any(r != rows for _, r, _ in runs):
                raise SystemExit(f"{steps} increments gave {runs[0][1]} rows, the one-shot read {rows}")
            sizes = runs[0][2]
            ratio = seconds / base
            results["increments"][steps] = {
                "cpu_s": seconds,
                "ratio": ratio,
                "bytes_median": statistics.median(sizes),
                "bytes_max": max(sizes),
            }
            print(
                f"{steps:4d} increments: {seconds:8.3f} s CPU  ratio {ratio:5.2f}x  bytes per increment "
                f"median {statistics.median(sizes) / 1e3:.0f} kB, max {max(sizes) / 1e3:.0f} kB"
            )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
