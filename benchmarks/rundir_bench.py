#!/usr/bin/env python
"""What the trust boundary costs: decoding a run by path versus through ``RunDirectory``.

Builds a run with the real ``DataLogger`` (reused from ``--workdir`` when it exists), then
times, best of ``--repeat``, alternating so both see the same machine load:

* by path: ``load_streams``, ``segment_files`` and their sizes, then ``SegmentDecoder.columns``
  over the paths (what collection did before the trust boundary);
* through ``RunDirectory``: ``scan_run`` (streams and inventory), the segments opened relative
  to the directory and checked at their ends, then ``check_unchanged`` (the pipeline's check
  before publishing).

Examples::

    python benchmarks/rundir_bench.py --records 20000 --rotate-bytes 2000    # ~270 small segments
    python benchmarks/rundir_bench.py --records 200000                       # one 5 MB segment
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from herocollector.collector import scan_run
from herocollector.decode.codec import SegmentDecoder
from herocollector.run.catalogue import load_streams
from herocollector.run.logdir import segment_files
from herocollector.run.rundir import RunDirectory, check_unchanged
from herocollector.testing.runs import build_run


def main() -> None:
    """Run the benchmark and print the best times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rotate-bytes", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here (reused if present)")
    args = parser.parse_args()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="rundir-bench-"))
    run = base / f"run-{args.records}-{args.rotate_bytes}"
    if not (run / "_DONE").exists():
        build_run(run, seed=7, n_records=args.records, rotate_bytes=args.rotate_bytes)
    streams = load_streams(run)
    ids = [s.stream_id for s in streams]

    def decoder() -> SegmentDecoder:
        epoch_scales = [s.epoch_scale for s in streams]
        return SegmentDecoder(ids, ids, epoch_scales=epoch_scales, value_scales=[s.value_scale for s in streams])

    def by_path() -> None:
        load_streams(run)
        paths = segment_files(run)
        sum(p.stat().st_size for p in paths)
        for _ in decoder().columns(paths):
            pass

    def through_run_directory() -> None:
        _, inventory = scan_run(run)
        with RunDirectory(run, expect=inventory) as directory:
            for _ in decoder().columns(directory.sources(inventory.segments)):
                pass
        check_unchanged(inventory)

    timed: dict[str, Callable[[], None]] = {"by path": by_path, "through RunDirectory": through_run_directory}
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(args.repeat):
        for name, action in timed.items():
            started = time.perf_counter()
            action()
            best[name] = min(best[name], time.perf_counter() - started)
    segments = len(segment_files(run))
    extra = best["through RunDirectory"] - best["by path"]
    print(f"{run}: {segments} segment(s), {args.records} records")
    for name, seconds in best.items():
        print(f"  {name:22} best {seconds * 1e3:8.2f} ms")
    print(f"  difference             {extra * 1e3:+8.2f} ms ({extra * 1e6 / max(segments, 1):+.1f} us per segment)")


if __name__ == "__main__":
    main()
