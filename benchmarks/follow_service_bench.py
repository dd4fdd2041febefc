#!/usr/bin/env python
"""Benchmark following a run while it is written against collecting it once at ``_DONE``.

One run of this script, side by side on the same run:

1. a logger process (the real ``DataLogger``, :mod:`herocollector.testing.live`) writes one run for
   ``--seconds`` at ``--rate`` records per second, rotating segments every ``--rotate-bytes``;
2. two service processes are started with it and announce it at once: one follows it
   (``follow: true``, ``follow_interval``), the other waits for ``_DONE`` and collects it once,
   as a service does without ``follow``. Both write ``format: "delta"``, both poll their own
   ``status()`` once a second (the follower's gives the run's lag).

It prints the CPU time each service process spent from the announcement to the run being
collected (``time.process_time()``: every thread, delta-rs's included), split by thread name
(``tokio-rt-worker``: delta-rs writing and committing; the interpreter's name: the service's own
threads), their ratio (the target is ≤ 1.3×), and the lag while following: median and maximum.
The follower's figure includes ``compact_on_done`` (the run's chunk files merged into one, their
row groups copied) unless ``--no-compact``. With ``--repeat N`` the whole comparison runs N
times, each on a run of its own, and the median ratio is printed.

Example::

    python benchmarks/follow_service_bench.py --seconds 60 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

SERVICE = textwrap.dedent(
    """
    import json, os, sys, time
    from herocollector import CollectionService, ServiceConfig
    from herocollector.decode import native

    def threads():
        # CPU seconds per thread name: delta-rs works on its tokio threads ("tokio-rt-worker"), the
        # service's own threads all show as the interpreter's name
        found = {}
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat") as stat, open(f"/proc/self/task/{task}/comm") as comm:
                    fields, name = stat.read().rpartition(")")[2].split(), comm.read().strip()
            except OSError:
                continue  # a thread that ended meanwhile
            found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return found

    native.warm_up()  # the compile is no part of either figure
    arguments, run = json.loads(sys.argv[1]), sys.argv[2]
    collected, lags = [], []
    with CollectionService(ServiceConfig.from_arguments(**arguments), on_collected=collected.append) as service:
        before, started = threads(), time.process_time()
        service.submit("logger", {"path": run})
        while not collected:
            lags.extend(r.lag for r in service.status().following if r.lag is not None)
            time.sleep(1.0)
        cpu, after = time.process_time() - started, threads()
    split = {name: round(after[name] - before.get(name, 0.0), 2) for name in after}
    print(json.dumps({"cpu": cpu, "rows": collected[0].rows, "lags": lags, "threads": split}))
    """
)


def arguments(tmp: Path, name: str, follow: bool, interval: float, compact: bool = True) -> dict[str, object]:
    return {
        "save_template": "{{ output_root }}/measurements",
        "output_root": str(tmp / name),
        "format": "delta",
        "follow": follow,
        "follow_interval": interval,
        "compact_on_done": compact,
        "columns": ["experiment", "measure"],
        "allowed_roots": [str(tmp / "runs")],
        "state_dir": str(tmp / f"state-{name}"),
        "scan_interval": None,
        "compact_interval": None,
        "timeout": None,
        "workers": 1,
    }


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], int, float]:
    """One side-by-side run: the logger, the follower and the collector at ``_DONE``."""
    with tempfile.TemporaryDirectory(prefix="follow-bench-") as folder:
        tmp = Path(folder)
        run = tmp / "runs" / "run"
        logger = subprocess.Popen(
            [sys.executable, "-m", "herocollector.testing.live", str(run), str(tmp / "truth"),
             "--seconds", str(args.seconds), "--rate", str(args.rate), "--rotate-bytes", str(args.rotate_bytes),
             "--max-nnz", str(args.max_nnz)],
        )  # fmt: skip
        while not (run / "streams").is_dir():
            time.sleep(0.01)
        services = {
            name: subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SERVICE,
                    json.dumps(arguments(tmp, name, name == "follow", args.interval, not args.no_compact)),
                    str(run),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for name in ("follow", "once")
        }
        results = {
            name: json.loads(process.communicate()[0].strip().splitlines()[-1]) for name, process in services.items()
        }
        assert logger.wait() == 0
        segments = sorted(run.glob("*.seg.zst"))
        size = sum(p.stat().st_size for p in segments)
    follow, once = results["follow"], results["once"]
    assert follow["rows"] == once["rows"], (follow["rows"], once["rows"])
    return follow, once, len(segments), size


def main() -> None:
    """Run the benchmark; see the module documentation."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=4_000.0, help="records per second")
    parser.add_argument("--rotate-bytes", type=int, default=8 << 20)
    parser.add_argument("--interval", type=float, default=2.0, help="follow_interval")
    parser.add_argument("--max-nnz", type=int, default=96, help="largest non-zeros per record (96: about 1 MB/s)")
    parser.add_argument("--repeat", type=int, default=1, help="side-by-side runs; the median ratio is printed")
    parser.add_argument(
        "--no-compact",
        action="store_true",
        help="compact_on_done: false (the follower's tables keep one file per chunk)",
    )
    args = parser.parse_args()
    compacted = "without" if args.no_compact else "with"
    ratios, lags = [], []
    for repeat in range(args.repeat):
        follow, once, segments, size = measure(args)
        if repeat == 0:
            print(f"run: {follow['rows']:,} records in {segments} segments, {size / 1e6:.1f} MB, written over "
                  f"{args.seconds:.0f} s")  # fmt: skip
        print(f"follow (follow_interval {args.interval} s, {compacted} compact_on_done): CPU {follow['cpu']:.2f} s "
              f"(per thread name: {follow['threads']})")  # fmt: skip
        print(f"once at _DONE (waiting meanwhile):   CPU {once['cpu']:.2f} s (per thread name: {once['threads']})")
        ratios.append(follow["cpu"] / once["cpu"])
        print(f"follow / once: {ratios[-1]:.2f}x")
        lags.extend(follow["lags"])
    print(f"follow / once, median of {len(ratios)}: {statistics.median(ratios):.2f}x (target <= 1.3x; "
          f"all: {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
    if lags:
        print(
            f"lag while following: median {statistics.median(lags):.2f} s, max {max(lags):.2f} s ({len(lags)} samples)"
        )


if __name__ == "__main__":
    main()
