r"""The ``herocollector`` command line: ``collect``, ``inspect``, ``cleanup`` and ``demo``.

Examples::

    herocollector collect /data/runs/run-0001 -o run-0001.arrow --columns experiment,entity
    herocollector collect /data/runs/* -o /data/collected \\
        --template "{{ experiment }}/{{ logger_name }}/{{ measure }}.arrow" --compression zstd
    herocollector inspect /data/runs/run-0001
    herocollector cleanup /data/runs/run-0001 --dry-run
    herocollector demo

Exit status: 0 on success, 1 when herocollector reports an error about its input (a
one-line message on stderr), 2 for bad arguments (a one-line message, never a traceback),
130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from herocollector.collector import Collector
from herocollector.config import parse_columns
from herocollector.decode.codec import SegmentDecoder
from herocollector.errors import CollectorError
from herocollector.output.files import COMPRESSIONS, FORMATS, OutputFormat, provenance_metadata
from herocollector.output.paths import PathTemplate, Trusted
from herocollector.output.pipeline import CollectionPlan, OutputPipeline, OutputTarget, PlannedRun, Router
from herocollector.run import logdir
from herocollector.run.catalogue import Stream, load_streams

PROG = "herocollector"
CLI_SOURCE = "herocollector-cli"
"""``source_name`` of files the CLI writes (template variable and provenance)."""


# ----------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` (one line) and exit with status 2."""
        text = " ".join(f"{self.prog}: error: {message} (see '{self.prog} --help')".split())
        self.exit(2, text + "\n")


def _rule(text: str) -> dict[str, Any]:
    """``--rule``: a label-selector rule as JSON text, or ``@file`` holding it."""
    source = "--rule"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise argparse.ArgumentTypeError(f"cannot read rule file {source!r}: {reason}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON in {source}: {exc}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"the rule in {source} must be a JSON object, got {type(spec).__name__}")
    from tools import label_selector

    try:
        label_selector.compile(spec)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"invalid label-selector rule in {source}: {exc}") from None
    return spec


def _columns(text: str) -> dict[str, str | None]:
    """``--columns a,b:int64``: label names, comma-separated, each optionally with an Arrow type."""
    columns: dict[str, str | None] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, type_name = item.partition(":")
        columns[name.strip()] = type_name.strip() or None
    try:
        parse_columns(columns)
    except CollectorError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    return columns


def _milliseconds(text: str) -> int | None:
    """A non-negative number of milliseconds, or ``none`` (wait forever)."""
    if text.strip().lower() in ("none", "forever", "inf"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds (an integer) or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive(text: str) -> int:
    """A positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _compression(text: str) -> str | None:
    """``zstd``, ``lz4`` or ``none``."""
    if text.lower() == "none":
        return None
    if text not in COMPRESSIONS:
        choices = ", ".join(repr(c) for c in COMPRESSIONS if c) + ", 'none'"
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {choices})")
    return text


def _template(text: str) -> str:
    """``--template``: a Jinja2 path template that compiles."""
    try:
        PathTemplate(text, ".")
    except CollectorError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    return text


def _package_version() -> str:
    try:
        return version("herocollector")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``herocollector`` command."""
    parser = _Parser(
        prog=PROG,
        description="Collect disco data-logger runs into Arrow IPC files.",
        epilog="Exit status: 0 ok, 1 error in the input or the run, 2 bad arguments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def wait_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--timeout",
            type=_milliseconds,
            default=60_000,
            metavar="MS",
            help="milliseconds to wait for _DONE in all the runs; 0 checks once, 'none' waits forever (default 60000)",
        )
        p.add_argument(
            "--backoff",
            type=_milliseconds,
            default=100,
            metavar="MS",
            help="milliseconds between _DONE polls (default 100)",
        )

    collect = sub.add_parser(
        "collect",
        help="collect logger directories into one Arrow IPC file, or templated files",
        description=(
            "Collect logger directories into one Arrow IPC file at OUT, or, with --template, into files "
            "under the folder OUT at paths rendered per stream (streams with the same path share a file). "
            "Files are written to a temporary name and renamed into place when complete."
        ),
    )
    collect.add_argument("paths", nargs="+", metavar="PATH", help="logger directories, collected in this order")
    collect.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the output file; with --template the output root folder"
    )
    collect.add_argument(
        "--rule", type=_rule, metavar="JSON|@FILE", help="label-selector rule spec selecting the streams (default: all)"
    )
    collect.add_argument(
        "--columns",
        type=_columns,
        default={},
        metavar="A,B:TYPE",
        help="stream labels to add as columns, comma-separated; NAME:TYPE pins an Arrow type (e.g. run:int64)",
    )
    collect.add_argument(
        "--template",
        type=_template,
        metavar="TEMPLATE",
        help=(
            "Jinja2 output path template, relative to OUT (or starting with {{ output_root }}); variables: the "
            "stream labels, output_root, logger_path, logger_name, source_name"
        ),
    )
    collect.add_argument(
        "--format",
        choices=FORMATS,
        default="file",
        help="Arrow IPC file (default), Arrow IPC stream, or Parquet (zstd unless --compression says otherwise)",
    )
    collect.add_argument(
        "--compression",
        type=_compression,
        default=None,
        metavar="{zstd,lz4}",
        help="IPC buffer compression (default none)",
    )
    wait_options(collect)
    collect.add_argument(
        "-j",
        "--jobs",
        type=_positive,
        default=2,
        metavar="N",
        help="runs decoded at the same time (default 2); rows are written in the order of the paths",
    )
    collect.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    inspect = sub.add_parser(
        "inspect",
        help="show the streams, segments, _DONE and record counts of logger directories",
        description=(
            "Show the streams (id, labels, scales), segments, _DONE marker and record counts of logger directories."
        ),
    )
    inspect.add_argument("paths", nargs="+", metavar="PATH", help="logger directories")
    inspect.add_argument("--no-count", action="store_true", help="do not decode the segments to count records")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    cleanup = sub.add_parser(
        "cleanup",
        help="remove the segment files (and optionally streams/) of finished logger directories",
        description=(
            "Remove the *.seg.zst segment files of logger directories, after waiting for _DONE in all of them; "
            "with --no-keep-meta also streams/. Nothing is removed if waiting times out."
        ),
    )
    cleanup.add_argument("paths", nargs="+", metavar="PATH", help="logger directories")
    cleanup.add_argument("--no-keep-meta", dest="keep_meta", action="store_false", help="also remove streams/")
    cleanup.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for _DONE (dangerous)")
    cleanup.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    wait_options(cleanup)

    demo = sub.add_parser(
        "demo",
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
    demo.add_argument("--runs", type=_positive, default=3, metavar="N", help="runs to simulate (default 3)")
    demo.add_argument(
        "--records", type=_positive, default=None, metavar="N", help="records per run (default: the config's)"
    )
    demo.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="S", help="seconds to wait for each step (default 30)"
    )
    return parser


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _consoles() -> tuple[Console, Console]:
    """Consoles for results (stdout) and progress and messages (stderr)."""
    return Console(highlight=False, markup=False), Console(stderr=True, highlight=False, markup=False)


def _progress(console: Console, quiet: bool, *, bytes_bar: bool = True) -> Progress:
    """A rich progress display on ``console`` (shown on terminals only, and gone when done)."""
    columns: list[Any] = [SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn()]
    if bytes_bar:
        columns.append(DownloadColumn())
    columns += [TextColumn("{task.fields[note]}"), TimeElapsedColumn()]
    return Progress(*columns, console=console, transient=True, disable=quiet or not console.is_terminal)


def _size(nbytes: int) -> str:
    """Bytes in human units."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _require_dir(path: Path) -> None:
    """Raise a CollectorError unless ``path`` is an existing directory."""
    if not path.exists():
        raise CollectorError("logger directory does not exist", path)
    if not path.is_dir():
        raise CollectorError("logger path is not a directory", path)


def _wait_for_done(paths: Sequence[Path], backoff: int, timeout: int | None, progress: Progress) -> None:
    """Wait for ``_DONE`` in every path (showing a spinner), or raise a CollectorError."""
    pending = [p for p in paths if not logdir.is_done(p)]
    if not pending:
        return
    task = progress.add_task(f"waiting for _DONE in {len(pending)} run(s)", total=None, note="")
    if not logdir.wait_for_done(pending, backoff, timeout):
        missing = [str(p) for p in pending if not logdir.is_done(p)]
        raise CollectorError(f"timed out after {timeout} ms waiting for _DONE in {', '.join(missing)}")
    progress.remove_task(task)


# ----------------------------------------------------------------------------------------
# collect
# ----------------------------------------------------------------------------------------


def _router(args: argparse.Namespace) -> tuple[Path, Router]:
    """The output root and the route of every stream: one file, or the rendered template."""
    if args.template is None:
        target = Path(os.path.abspath(args.output))
        if target.is_dir():
            raise CollectorError(
                "output is a directory; give a file name, or --template to write files under it", target
            )
        return target.parent, lambda index, run, stream: target
    template = PathTemplate(args.template, args.output)

    def route(index: int, run: PlannedRun, stream: Stream) -> Path:
        context = {
            **stream.metadata,
            "source_name": CLI_SOURCE,
            "logger_path": Trusted(str(run.path)),
            "logger_name": run.path.name,
        }
        return template.render(context)

    return template.output_root, route


def _provenance(plan: CollectionPlan, collected_at: str) -> Callable[[OutputTarget], dict[str, str]]:
    """Schema metadata of a CLI output (job 0: written by the command line, not by the actor)."""

    def provenance(target: OutputTarget) -> dict[str, str]:
        sources = list(dict.fromkeys(str(plan.runs[i].path) for i, _ in target.members))
        logger_path = sources[0] if len(sources) == 1 else json.dumps(sources)
        streams = [stream.metadata for _, stream in target.members]
        return provenance_metadata(logger_path, CLI_SOURCE, collected_at, 0, streams)

    return provenance


def cmd_collect(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector collect``: see :func:`build_parser`."""
    from datetime import datetime

    started = time.monotonic()
    paths = Collector([os.path.abspath(p) for p in args.paths]).paths
    for path in paths:
        _require_dir(path)
    names, types = parse_columns(args.columns)
    pipeline = OutputPipeline(
        rule=args.rule,
        columns=names,
        label_types=types,
        format=OutputFormat.parse(args.format),
        compression=args.compression,
        prefetch_runs=args.jobs - 1,
    )
    with _progress(err, args.quiet) as progress:
        _wait_for_done(paths, args.backoff, args.timeout, progress)
        runs = [pipeline.plan_run(p) for p in paths]
        root, route = _router(args)
        plan = pipeline.plan(runs, route)
        if args.template is None and not plan.targets:
            plan.targets.append(OutputTarget(route(0, runs[0], Stream(0, 1.0, 1.0))))
        collected_at = datetime.now(UTC).isoformat()
        task = progress.add_task("collecting", total=plan.segment_bytes or None, note="0 rows")
        rows = 0

        def on_rows(n: int) -> None:
            nonlocal rows
            rows += n
            progress.update(task, note=f"{rows:,} rows")

        written = pipeline.write(
            plan,
            provenance=_provenance(plan, collected_at),
            on_bytes=lambda n: progress.advance(task, n),
            on_rows=on_rows,
        )
    elapsed = time.monotonic() - started
    if not any(run.selected for run in runs):
        err.print(f"{PROG}: warning: no stream was selected in {len(paths)} run(s)", soft_wrap=True)
    for output in written:
        out.print(f"{output.path}  {output.rows:,} rows", soft_wrap=True)
    rate = rows / elapsed if elapsed > 0 else float("inf")
    out.print(
        f"collected {len(paths)} run(s): {rows:,} rows, {len(written)} file(s) under {root}, "
        f"{_size(plan.segment_bytes)} of segments in {elapsed:.3f} s ({rate:,.0f} records/s)",
        soft_wrap=True,
    )
    return 0


# ----------------------------------------------------------------------------------------
# inspect
# ----------------------------------------------------------------------------------------


def _count_records(
    path: Path, streams: list[Stream], segments: list[Path], progress: Progress, task: Any
) -> np.ndarray:
    """Records per stream (in the order of ``streams``), counted over all segments."""
    ids = np.array([s.stream_id for s in streams], dtype=np.uint64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    counts = np.zeros(ids.size, dtype=np.int64)
    decoder = SegmentDecoder(ids.tolist())
    for segment in segments:
        progress.update(task, note=f"{path.name}/{segment.name}")
        for records in decoder.decode_file(segment):
            slots = np.searchsorted(sorted_ids, records.stream_ids.astype(np.uint64))
            counts += np.bincount(slots, minlength=ids.size)[: ids.size]
        progress.advance(task, segment.stat().st_size)
    result = np.empty_like(counts)
    result[order] = counts
    return result


def _inspect_one(path: Path, count: bool, progress: Progress, task: Any) -> dict[str, Any]:
    """What ``inspect`` reports about one logger directory."""
    _require_dir(path)
    segments = logdir.segment_files(path)
    report: dict[str, Any] = {
        "path": str(path),
        "done": logdir.is_done(path),
        "segment_count": len(segments),
        "segment_bytes": sum(s.stat().st_size for s in segments),
        "segments": [{"name": s.name, "bytes": s.stat().st_size} for s in segments],
        "records": None,
        "error": None,
        "streams": [],
    }
    streams = load_streams(path)
    report["streams"] = [
        {
            "stream_id": s.stream_id,
            "labels": dict(s.labels),
            "epoch_scale": s.epoch_scale,
            "value_scale": s.value_scale,
            "records": None,
        }
        for s in streams
    ]
    if count:
        try:
            counts = _count_records(path, streams, segments, progress, task)
        except CollectorError as exc:
            report["error"] = str(exc)
        else:
            for entry, n in zip(report["streams"], counts.tolist(), strict=False):
                entry["records"] = n
            report["records"] = int(counts.sum())
    return report


def _common_labels(labels: list[dict[str, Any]]) -> dict[str, Any]:
    """The labels every stream has, with the same value (none when there are fewer than 2 streams)."""
    if len(labels) < 2:
        return {}
    first, rest = labels[0], labels[1:]
    return {k: v for k, v in first.items() if all(k in other and other[k] == v for other in rest)}


def _format_labels(labels: dict[str, Any]) -> str:
    """``key=value, ...``."""
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def _print_report(report: dict[str, Any], out: Console) -> None:
    """One logger directory as a header and a table of its streams."""
    done = "yes" if report["done"] else "no (the logger may still be writing)"
    records = "not counted" if report["records"] is None else f"{report['records']:,}"
    out.print(f"[bold]{escape(report['path'])}[/bold]", soft_wrap=True, markup=True)
    out.print(
        f"  _DONE: {done}   segments: {report['segment_count']} ({_size(report['segment_bytes'])})   "
        f"streams: {len(report['streams'])}   records: {records}",
        soft_wrap=True,
    )
    if report["error"]:
        out.print(f"  [red]error:[/red] {escape(report['error'])}", soft_wrap=True, markup=True)
    common = _common_labels([s["labels"] for s in report["streams"]])
    if common:
        out.print(f"  labels of every stream: {_format_labels(common)}", soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("stream_id", justify="right")
    table.add_column("labels" if not common else "other labels")
    table.add_column("epoch_scale", justify="right")
    table.add_column("value_scale", justify="right")
    table.add_column("records", justify="right")
    for s in report["streams"]:
        labels = _format_labels({k: v for k, v in s["labels"].items() if k not in common})
        n = "-" if s["records"] is None else f"{s['records']:,}"
        table.add_row(str(s["stream_id"]), labels, f"{s['epoch_scale']:g}", f"{s['value_scale']:g}", n)
    out.print(table)
    out.print()


def cmd_inspect(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector inspect``: see :func:`build_parser`."""
    paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in args.paths))
    for path in paths:
        _require_dir(path)
    total = sum(s.stat().st_size for p in paths for s in logdir.segment_files(p))
    reports = []
    with _progress(err, args.quiet) as progress:
        task = progress.add_task("counting records", total=total if not args.no_count else 0, note="")
        for path in paths:
            reports.append(_inspect_one(path, not args.no_count, progress, task))
    if args.json:
        out.print_json(json.dumps(reports))
    else:
        for report in reports:
            _print_report(report, out)
    failed = [r for r in reports if r["error"]]
    for report in failed:
        err.print(f"{PROG}: error: {report['error']}", soft_wrap=True)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------
# cleanup
# ----------------------------------------------------------------------------------------


def cmd_cleanup(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector cleanup``: see :func:`build_parser`."""
    paths = Collector([os.path.abspath(p) for p in args.paths]).paths
    plan: list[tuple[Path, list[Path], Path | None]] = []
    for path in paths:
        _require_dir(path)
        streams = path / logdir.STREAMS_DIR
        segments = logdir.segment_files(path)
        if not (streams.is_dir() or logdir.is_done(path) or segments):
            raise CollectorError("not a logger directory (no streams/, _DONE or segments)", path)
        drop_meta = not args.keep_meta and streams.is_dir() and not streams.is_symlink()
        plan.append((path, segments, streams if drop_meta else None))
    nfiles = sum(len(segments) for _, segments, _ in plan)
    nbytes = sum(s.stat().st_size for _, segments, _ in plan for s in segments)
    if args.dry_run:
        for path, segments, meta in plan:
            note = ""
            if not logdir.is_done(path):
                note = "  (no _DONE yet: cleanup waits for it)" if args.wait else "  (no _DONE!)"
            out.print(f"{path}{note}", soft_wrap=True)
            for segment in segments:
                out.print(f"  would remove {segment.name}  ({_size(segment.stat().st_size)})", soft_wrap=True)
            if meta is not None:
                out.print(f"  would remove {logdir.STREAMS_DIR}/", soft_wrap=True)
        out.print(f"dry run: would remove {nfiles} segment file(s), {_size(nbytes)}, from {len(plan)} run(s)")
        return 0
    with _progress(err, False, bytes_bar=False) as progress:
        if args.wait:
            _wait_for_done(paths, args.backoff, args.timeout, progress)
        if not Collector(paths).cleanup(
            keep_meta=args.keep_meta, wait_for_done=args.wait, backoff=args.backoff, timeout=args.timeout
        ):
            raise CollectorError("timed out waiting for _DONE; nothing removed")
    folders = "" if args.keep_meta else f" and {sum(1 for *_, s in plan if s is not None)} streams/ folder(s)"
    out.print(f"removed {nfiles} segment file(s), {_size(nbytes)}{folders}, from {len(plan)} run(s)", soft_wrap=True)
    return 0


# ----------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------

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
    """Ignore SIGINT and SIGTERM (while stopping the processes the demo started)."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _raise_on_sigterm(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector demo``: see :func:`build_parser`."""
    from herocollector.actor.launcher import BossProcess, load_config, wait_until

    realm = f"herocollector-demo-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    processes: list[BossProcess] = []
    try:
        with ExitStack() as stack:
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
                        f"started BOSS for {config['_id']!r} ({config['classname']}), pid {pid}, "
                        f"log {process.log_file}",
                        soft_wrap=True,
                    )
                # Release the remote HEROs before stopping BOSS: a zenoh session closed after its
                # peers are gone waits for a timeout.
                with ExitStack() as remotes:
                    collector = remotes.enter_context(processes[0].remote(args.timeout))
                    logger = remotes.enter_context(processes[1].remote(args.timeout))
                    out.print(f"both HEROs answer after {time.monotonic() - started:.1f} s", soft_wrap=True)
                    return _demo_runs(args, out, collector, logger, wait_until)
            finally:
                with _signals_ignored():
                    _stop_all(processes)
                gone = all(not p.alive() for p in processes)
                out.print(f"stopped {len(processes)} BOSS process(es){'' if gone else ' (some did not stop!)'}")
                out.print(f"demo finished in {time.monotonic() - started:.1f} s")
    finally:
        signal.signal(signal.SIGTERM, previous)


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


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace, Console, Console], int]] = {
    "collect": cmd_collect,
    "inspect": cmd_inspect,
    "cleanup": cmd_cleanup,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``herocollector`` command.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 ok, 1 error, 2 bad arguments (argparse exits with 2 itself),
        130 interrupted.
    """
    args = build_parser().parse_args(argv)
    out, err = _consoles()
    try:
        return COMMANDS[args.command](args, out, err)
    except CollectorError as exc:
        err.print(f"{PROG}: error: {exc}", soft_wrap=True)
    except (OSError, TimeoutError, ValueError) as exc:
        err.print(f"{PROG}: error: {type(exc).__name__}: {exc}", soft_wrap=True)
    except KeyboardInterrupt:
        err.print(f"{PROG}: interrupted")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
