"""``herocollector demo``: BOSS with the collector actor and the demo logger HERO, end to end.

The demo starts two BOSS processes in a private realm, simulates runs, follows each ``finished``
event to its collection (reading the outputs back), calls ``status()``, ``failed()`` and
``cleanup()`` remotely, and stops every process it started, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from herocollector.cli import common
from herocollector.cli.common import Subparsers
from herocollector.run import logdir

NAME = "demo"


def register(subparsers: Subparsers) -> None:
    """Add ``demo`` to the ``herocollector`` parser."""
    demo = subparsers.add_parser(
        NAME,
        help="run the end-to-end demo: BOSS with the collector actor and a demo logger HERO",
        description=(
            "Start BOSS with the collector actor (boss_configs/collector.json) and the demo logger HERO "
            "(boss_configs/demo_logger.json) in a private realm, simulate runs, show each 'finished' event "
            "being collected, call status() and cleanup() remotely, then stop every process it started."
        ),
    )
    demo.add_argument(
        "--workdir", metavar="DIR", help="keep runs, outputs, journal and logs here (default: a temporary folder)"
    )
    demo.add_argument("--runs", type=common.positive, default=3, metavar="N", help="runs to simulate (default 3)")
    demo.add_argument(
        "--records", type=common.positive, default=None, metavar="N", help="records per run (default: the config's)"
    )
    demo.add_argument(
        "--timeout", type=common.seconds, default=30.0, metavar="S", help="seconds to wait for each step (default 30)"
    )


EVENT_GRACE = 5.0
"""Seconds the demo waits for a run's ``finished`` event to reach the collector."""
FINAL_STATES = ("done", "failed", "cleaned")


def _find_job(status: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The job of a logger path in a ``status()`` answer."""
    return next((job for job in status.get("recent", []) if job.get("path") == path), None)


def _final(job: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job if it reached a final state."""
    return job if job and job["state"] in FINAL_STATES else None


def _stop_all(processes: Sequence[Any]) -> None:
    """Stop BOSS processes concurrently (each may take a few seconds to shut down)."""
    threads = [threading.Thread(target=p.stop, daemon=True) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _read_rows(files: Sequence[str]) -> int:
    """Rows in Arrow IPC files, read back with pyarrow."""
    return sum(pa.ipc.open_file(f).read_all().num_rows for f in files)


def _output_streams(files: Sequence[str]) -> int:
    """Streams recorded in the provenance of output files."""
    from herocollector.output.files import read_provenance

    return sum(len(json.loads(read_provenance(f).get("streams", "[]"))) for f in files)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore the stop signals (while stopping the processes the demo started, which must not be cut short)."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in common.STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name]`` set to ``value`` for this process and the processes it starts, then as before."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector demo``: see :func:`register`."""
    from herocollector.actor.launcher import BossProcess, load_config, wait_until
    from herocollector.actor.loopback import ENV, LoopbackHub
    from herocollector.decode import native

    realm = f"herocollector-demo-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    processes: list[BossProcess] = []
    with ExitStack() as stack:
        # A first run compiles the decoder here, while BOSS starts, and says so: the collector
        # then loads it from the cache, and the first run's latency is the collection's alone.
        stack.enter_context(native.compile_notices(lambda notice: out.print(notice.message, soft_wrap=True)))
        compiling = native.warm_up_in_background()
        if not os.environ.get(ENV):
            # The demo's HEROs meet on 127.0.0.1 only: nothing on the network sees them, nor they it.
            hub = stack.enter_context(LoopbackHub())
            stack.enter_context(_environment(ENV, hub.peer_config()))
        if args.workdir:
            workdir = Path(os.path.abspath(args.workdir))
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="herocollector-demo-")))
        runs_dir, collected, state, boss_dir = (workdir / n for n in ("runs", "collected", "state", "boss"))
        collector_config = load_config(
            "collector.json",
            {
                "default_metadata": {"output_root": str(collected)},
                "allowed_roots": [str(runs_dir)],
                "state_dir": str(state),
                "retry_delay": 0.2,
                "retry_delay_max": 2.0,
            },
        )
        logger_arguments: dict[str, Any] = {"root": str(runs_dir)}
        if args.records is not None:
            logger_arguments["records"] = args.records
        logger_config = load_config("demo_logger.json", logger_arguments)
        out.print(f"[bold]herocollector demo[/bold] in realm {escape(realm)}", soft_wrap=True, markup=True)
        kept = "" if args.workdir else " (temporary, removed at the end)"
        out.print(f"work directory: {workdir}{kept}", soft_wrap=True)
        try:
            for config in (collector_config, logger_config):
                process = BossProcess(config, realm, boss_dir)
                processes.append(process)
                process.start()
                pid = process.process.pid if process.process else "?"
                out.print(
                    f"started BOSS for {config['_id']!r} ({config['classname']}), pid {pid}, log {process.log_file}",
                    soft_wrap=True,
                )
            # Release the remote HEROs before stopping BOSS: a zenoh session closed after its
            # peers are gone waits for a timeout.
            with ExitStack() as remotes:
                collector = remotes.enter_context(processes[0].remote(args.timeout))
                logger = remotes.enter_context(processes[1].remote(args.timeout))
                out.print(f"both HEROs answer after {time.monotonic() - started:.1f} s", soft_wrap=True)
                if compiling is not None:
                    compiling.join()
                return _demo_runs(args, out, collector, logger, wait_until)
        finally:
            with _signals_ignored():
                _stop_all(processes)
            gone = all(not p.alive() for p in processes)
            out.print(f"stopped {len(processes)} BOSS process(es){'' if gone else ' (some did not stop!)'}")
            out.print(f"demo finished in {time.monotonic() - started:.1f} s")


def _demo_runs(
    args: argparse.Namespace, out: Console, collector: Any, logger: Any, wait_until: Callable[..., Any]
) -> int:
    """Simulate the runs, follow their collection, call ``status()`` and ``cleanup()``."""
    results: list[dict[str, Any]] = []
    ok = True
    for number in range(1, args.runs + 1):
        summary = logger.simulate(1, args.records)[0]
        path = summary["path"]
        out.print(
            f"\n[bold]run {number}/{args.runs}[/bold]: demo-logger finished {escape(path)} "
            f"({summary['records']:,} records)",
            soft_wrap=True,
            markup=True,
        )
        deadline = time.monotonic() + EVENT_GRACE
        job = wait_until(
            lambda path=path, deadline=deadline: (
                _find_job(collector.status(), path) if time.monotonic() < deadline else {"missing": True}
            ),
            args.timeout,
            f"the collector to journal {path}",
        )
        if job.get("missing"):
            out.print(
                f"  [yellow]the 'finished' event did not reach the collector in {EVENT_GRACE:g} s; "
                "collecting it remotely[/yellow]",
                markup=True,
            )
            collector.collect(path)
        job = wait_until(
            lambda path=path: _final(_find_job(collector.status(), path)),
            args.timeout,
            f"the collection of {path}",
        )
        done_at = (Path(path) / logdir.DONE_MARKER).stat().st_mtime
        files = sorted(job["outputs"])
        result = {
            "run": number,
            "path": path,
            "state": job["state"],
            "source": job["source"],
            "rows": job["rows"] or 0,
            "files": files,
            "streams": _output_streams(files) if job["state"] == "done" else 0,
            "event_ms": (job["created"] - done_at) * 1000,
            "latency_ms": (job["updated"] - done_at) * 1000,
        }
        results.append(result)
        if job["state"] != "done":
            ok = False
            out.print(
                f"  [red]job {job['id']} {job['state']}:[/red] {escape(str(job['error']))}", soft_wrap=True, markup=True
            )
            continue
        read = _read_rows(files)
        ok = ok and read == result["rows"]
        out.print(
            f"  collected by job {job['id']} (event from {job['source']}, "
            f"received {result['event_ms']:.0f} ms after _DONE): "
            f"{result['streams']} streams, {result['rows']:,} rows, {len(files)} files, "
            f"latency {result['latency_ms']:.0f} ms (_DONE to outputs committed)",
            soft_wrap=True,
        )
        for file in files:
            out.print(f"    {file}  {job['outputs'][file]:,} rows", soft_wrap=True)
        out.print(f"  read back with pyarrow: {read:,} rows {'ok' if read == result['rows'] else 'MISMATCH'}")

    status = collector.status()
    out.print(
        f"\ncollector.status(): counts {json.dumps(status['counts'])}, queued {status['queued']}, "
        f"journal {status['journal']}",
        soft_wrap=True,
    )
    failed = collector.failed()
    out.print(f"collector.failed(): {len(failed)} failed job(s)")
    segments_before = sum(len(logdir.segment_files(r["path"])) for r in results)
    cleaned = collector.cleanup()
    segments_after = sum(len(logdir.segment_files(r["path"])) for r in results)
    trashed = sum(1 for r in results for p in Path(r["path"]).glob(f"*{logdir.SEGMENT_SUFFIX}.trash-*"))
    out.print(
        f"collector.cleanup(): {cleaned}; segment files {segments_before} -> {segments_after}"
        f"{f' ({trashed} in the trash, restorable)' if trashed else ''}, streams/ kept",
        soft_wrap=True,
    )
    after = collector.status()
    waiting = after.get("pending_deletion") or []
    note = ""
    due = min((e["delete_after"] for e in waiting if e.get("delete_after") is not None), default=None)
    if due is not None:
        note = f", trash of {len(waiting)} run(s) deleted for good in {max(due - time.time(), 0):.0f} s"
    out.print(f"collector.status(): counts {json.dumps(after['counts'])}{note}", soft_wrap=True)
    ok = ok and bool(cleaned) and not failed

    table = Table(title="summary", show_edge=False)
    for name in ("run", "state", "streams", "rows", "files", "latency"):
        table.add_column(name, justify="left" if name == "state" else "right")
    for r in results:
        table.add_row(
            str(r["run"]),
            r["state"],
            str(r["streams"]),
            f"{r['rows']:,}",
            str(len(r["files"])),
            f"{r['latency_ms']:.0f} ms",
        )
    out.print()
    out.print(table)
    total = sum(r["rows"] for r in results)
    out.print(
        f"{'ok' if ok else 'FAILED'}: {sum(r['state'] == 'done' for r in results)}/{len(results)} runs collected, "
        f"{total:,} rows, {sum(len(r['files']) for r in results)} files"
    )
    return 0 if ok else 1
