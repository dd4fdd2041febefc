#!/usr/bin/env python
"""Benchmark following a run while it is written against collecting it once at ``_DONE``.

One run of this script, side by side:

1. a logger process (the real ``DataLogger``, :mod:`herocollector.testing.live`) writes one run for
   ``--seconds`` at ``--rate`` records per second, rotating segments every ``--rotate-bytes``;
2. meanwhile a service (``format: "delta"``, ``follow: true``, ``follow_interval``) follows it;
   ``status()`` is polled every 0.25 s for the run's lag;
3. once the run is done, a second service collects the same, finished run once into another table.

It prints the CPU time each service spent from the announcement to the run being collected
(``time.process_time()``, every thread of the process), their ratio (the target is ≤ 1.3×), and
the lag while following: median and maximum.

Example::

    python benchmarks/follow_service_bench.py --seconds 60 --rate 20000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def config(tmp: Path, name: str, follow: bool, interval: float) -> Any:
    from herocollector import ServiceConfig

    return ServiceConfig.from_arguments(
        save_template="{{ output_root }}/measurements",
        output_root=str(tmp / name),
        format="delta",
        follow=follow,
        follow_interval=interval,
        columns=["experiment", "measure"],
        allowed_roots=[str(tmp / "runs")],
        state_dir=str(tmp / f"state-{name}"),
        scan_interval=None,
        compact_interval=None,
        timeout=None,
        workers=1,
    )


def collect(service: Any, run: Path, collected: list[Any], lags: list[float] | None) -> float:
    """Announce the run and wait until it is collected; the CPU time that took."""
    started = time.process_time()
    service.submit("logger", {"path": str(run)})
    while not collected:
        if lags is not None:
            lags.extend(r.lag for r in service.status().following if r.lag is not None)
        time.sleep(0.25)
    return time.process_time() - started


def main() -> None:
    """Run the benchmark; see the module documentation."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=10_000.0, help="records per second")
    parser.add_argument("--rotate-bytes", type=int, default=4 << 20)
    parser.add_argument("--interval", type=float, default=2.0, help="follow_interval")
    args = parser.parse_args()

    from herocollector import CollectionService
    from herocollector.decode import native

    native.warm_up()  # the compile is no part of either figure
    with tempfile.TemporaryDirectory(prefix="follow-bench-") as folder:
        tmp = Path(folder)
        run = tmp / "runs" / "run"
        logger = subprocess.Popen(
            [sys.executable, "-m", "herocollector.testing.live", str(run), str(tmp / "truth"),
             "--seconds", str(args.seconds), "--rate", str(args.rate), "--rotate-bytes", str(args.rotate_bytes)],
        )  # fmt: skip
        while not (run / "streams").is_dir():
            time.sleep(0.01)
        followed: list[Any] = []
        lags: list[float] = []
        with CollectionService(config(tmp, "followed", True, args.interval), on_collected=followed.append) as service:
            follow_cpu = collect(service, run, followed, lags)
        assert logger.wait() == 0
        once: list[Any] = []
        with CollectionService(config(tmp, "once", False, args.interval), on_collected=once.append) as service:
            once_cpu = collect(service, run, once, None)
        rows = followed[0].rows
        assert rows == once[0].rows, (rows, once[0].rows)
        segments = len(list(run.glob("*.seg.zst")))
        size = sum(p.stat().st_size for p in run.glob("*.seg.zst"))
    print(f"run: {rows:,} records in {segments} segments, {size / 1e6:.1f} MB, written over {args.seconds:.0f} s")
    print(f"follow (follow_interval {args.interval} s): CPU {follow_cpu:.2f} s")
    print(f"once at _DONE:                CPU {once_cpu:.2f} s")
    print(f"follow / once: {follow_cpu / once_cpu:.2f}x (target <= 1.3x)")
    if lags:
        print(
            f"lag while following: median {statistics.median(lags):.2f} s, max {max(lags):.2f} s ({len(lags)} samples)"
        )


if __name__ == "__main__":
    main()
