"""How long concurrent remote calls take to answer: N cleanups of collected runs, plus some of runs without ``_DONE``.

Starts the collector under BOSS in a realm of its own, collects ``--runs`` runs, writes
``--waiting`` runs without ``_DONE``, then calls ``cleanup`` on all of them at once, each from a
thread with its own ``RemoteHERO``, and prints the answer times. Everything it starts, it stops.

Usage::

    .venv/bin/python benchmarks/remote_calls_bench.py --runs 9 --waiting 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import BossProcess, load_config, wait_for_hero, wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="collected runs to clean")
    parser.add_argument("--waiting", type=int, default=3, help="runs without _DONE (cleaned with force)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as folder:
        tmp = Path(folder)
        realm = f"hc-bench-{uuid.uuid4().hex[:12]}"
        arguments = {
            "default_metadata": {"output_root": str(tmp / "out")},
            "allowed_roots": [str(tmp / "runs")],
            "state_dir": str(tmp / "state"),
            "scan_interval": None,
        }
        boss = BossProcess(load_config("collector.json", arguments), realm, tmp / "boss").start()
        proxies: list[Any] = []
        try:
            actor = boss.remote(timeout=90)
            calls: list[tuple[Path, dict[str, Any]]] = []
            for i in range(args.runs):
                path = tmp / "runs" / f"collected-{i}"
                write_simulated_run(path, records=200, entities=2, seed=i, labels={"experiment": "bench"})
                actor.collect(str(path))
                calls.append((path, {}))
            wait_until(lambda: actor.status()["counts"]["done"] == args.runs, 120, "collected runs")
            for i in range(args.waiting):
                path = tmp / "runs" / f"waiting-{i}"
                write_simulated_run(path, records=200, entities=2, seed=100 + i, labels={"experiment": "bench"})
                (path / "_DONE").unlink()
                calls.append((path, {"force": True, "timeout": 60_000}))
            proxies = [wait_for_hero("collector", realm, 60, boss) for _ in calls]
            barrier = threading.Barrier(len(calls))
            seconds: list[float] = []
            answers: list[str] = []

            def call(proxy: Any, path: Path, kwargs: dict[str, Any]) -> None:
                barrier.wait()
                start = time.perf_counter()
                try:
                    answer: Any = proxy.cleanup(str(path), **kwargs)
                except Exception as exc:  # noqa: BLE001 - what the benchmark reports
                    answer = type(exc).__name__
                seconds.append(time.perf_counter() - start)
                answers.append("accepted" if isinstance(answer, dict) else str(answer))

            threads = [threading.Thread(target=call, args=(p, *c)) for p, c in zip(proxies, calls, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for path, _ in calls[args.runs :]:
                (path / "_DONE").touch()
            print(f"{len(calls)} concurrent cleanups ({args.runs} collected runs, {args.waiting} without _DONE)")
            print(f"answer seconds: median {statistics.median(seconds):.2f}, max {max(seconds):.2f}")
            print("answers:", {a: answers.count(a) for a in sorted(set(answers))})
        finally:
            for proxy in proxies:
                proxy._destroy_hero()
            boss.stop(timeout=10)


if __name__ == "__main__":
    main()
