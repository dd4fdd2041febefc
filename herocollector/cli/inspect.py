"""``herocollector inspect``: streams, segments, trash, ``_DONE`` marker, record counts and time ranges of runs.

Counting decodes every segment with the collector's decoder, so a damaged segment is reported
(named, with the offset) the way ``collect`` would report it, while what could be read is shown.
The same pass gives each stream's first and last epoch. Segments a cleanup moved into the run's
trash (:mod:`herocollector.run.trash`) are listed with when they were trashed and until when
they can be restored: the CLI's trash is kept until ``cleanup --purge``, an actor's for its
``cleanup_grace`` (``--grace``).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from herocollector.cli import common
from herocollector.cli.common import PROG, Subparsers
from herocollector.decode.codec import SegmentDecoder
from herocollector.errors import CollectorError
from herocollector.run import logdir, trash
from herocollector.run.catalogue import Stream, load_streams

DEFAULT_GRACE = 3600.0
"""The actor's default ``cleanup_grace``: how long an actor keeps a cleaned run's trash."""

NAME = "inspect"


def register(subparsers: Subparsers) -> None:
    """Add ``inspect`` to the ``herocollector`` parser."""
    inspect = subparsers.add_parser(
        NAME,
        help="show the streams, segments, trash, _DONE, record counts and time ranges of logger directories",
        description=(
            "Show the streams (id, labels, scales), segments, the segments in the run's trash (restorable until "
            "when), the _DONE marker, and per stream the record count and the first and last epoch."
        ),
    )
    inspect.add_argument("paths", nargs="+", metavar="PATH", help="logger directories")
    inspect.add_argument(
        "--no-count", action="store_true", help="do not decode the segments (no record counts, no time ranges)"
    )
    inspect.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="S",
        help=f"the cleanup_grace of the actor that cleaned the runs (default {DEFAULT_GRACE:g}), for restorable until",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _count_records(
    path: Path, streams: list[Stream], segments: list[Path], progress: Progress, task: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records, first tick and last tick per stream (in the order of ``streams``), over all segments.

    A stream without records has the first tick ``int64`` max and the last ``int64`` min.
    """
    ids = np.array([s.stream_id for s in streams], dtype=np.uint64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    counts = np.zeros(ids.size, dtype=np.int64)
    first = np.full(ids.size, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(ids.size, np.iinfo(np.int64).min, dtype=np.int64)
    decoder = SegmentDecoder(ids.tolist())
    for segment in segments:
        progress.update(task, note=f"{path.name}/{segment.name}")
        for records in decoder.decode_file(segment):
            slots = np.searchsorted(sorted_ids, records.stream_ids.astype(np.uint64))
            counts += np.bincount(slots, minlength=ids.size)[: ids.size]
            np.minimum.at(first, slots, records.ticks)
            np.maximum.at(last, slots, records.ticks)
        progress.advance(task, segment.stat().st_size)
    results = []
    for values in (counts, first, last):
        result = np.empty_like(values)
        result[order] = values
        results.append(result)
    return results[0], results[1], results[2]


def _trash_report(path: Path, grace: float) -> dict[str, Any] | None:
    """The run's trash: segments and bytes in it, when trashed, until when restorable (None: empty)."""
    entries = trash.trashed(path)
    if not entries:
        return None
    segments = [p for p, _ in entries if p.name.split(".trash-")[0].endswith(logdir.SEGMENT_SUFFIX)]
    stamps = [stamp for _, stamp in entries]
    return {
        "segments": len(segments),
        "bytes": sum(p.lstat().st_size for p in segments),
        "streams": any(p.name.startswith(f"{logdir.STREAMS_DIR}.trash-") for p, _ in entries),
        "trashed_at": min(stamps),
        "restorable_until": min(stamps) + grace,
        "restore": f"{PROG} restore {path}",
    }


def _inspect_one(path: Path, count: bool, grace: float, progress: Progress, task: Any) -> dict[str, Any]:
    """What ``inspect`` reports about one logger directory."""
    common.require_dir(path)
    segments = logdir.segment_files(path)
    report: dict[str, Any] = {
        "path": str(path),
        "done": logdir.is_done(path),
        "segment_count": len(segments),
        "segment_bytes": sum(s.stat().st_size for s in segments),
        "segments": [{"name": s.name, "bytes": s.stat().st_size} for s in segments],
        "records": None,
        "error": None,
        "trash": _trash_report(path, grace),
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
            "first_epoch": None,
            "last_epoch": None,
        }
        for s in streams
    ]
    if count:
        try:
            counts, first, last = _count_records(path, streams, segments, progress, task)
        except CollectorError as exc:
            report["error"] = str(exc)
        else:
            for entry, stream, n, lo, hi in zip(
                report["streams"], streams, counts.tolist(), first.tolist(), last.tolist(), strict=True
            ):
                entry["records"] = n
                if n:
                    entry["first_epoch"] = lo * stream.epoch_scale
                    entry["last_epoch"] = hi * stream.epoch_scale
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


def _epoch(value: float | None) -> str:
    """An epoch for the table: UTC time when it looks like Unix seconds (1973 to 2100), else the number."""
    if value is None:
        return "-"
    if 1e8 < value < 4.1e9:
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{value:g}"


def _print_trash(report: dict[str, Any], out: Console) -> None:
    """What the run's trash holds, and how to get it back."""
    held = report["trash"]
    if held is None:
        return
    until = datetime.fromtimestamp(held["restorable_until"]).isoformat(sep=" ", timespec="seconds")
    trashed = datetime.fromtimestamp(held["trashed_at"]).isoformat(sep=" ", timespec="seconds")
    meta = " and streams/" if held["streams"] else ""
    out.print(
        f"  trash: {held['segments']} segment(s) ({common.size(held['bytes'])}){meta}, trashed {trashed}; "
        f"restorable with '{held['restore']}' until purged: an actor purges at {until} (its cleanup_grace), "
        f"'{PROG} cleanup --purge' at once",
        soft_wrap=True,
    )


def _print_report(report: dict[str, Any], out: Console) -> None:
    """One logger directory as a header and a table of its streams."""
    done = "yes" if report["done"] else "no (the logger may still be writing)"
    records = "not counted" if report["records"] is None else f"{report['records']:,}"
    if report["trash"] and not report["segment_count"]:
        records = f"none in place ({report['trash']['segments']} segment(s) in the trash)"
    out.print(f"[bold]{escape(report['path'])}[/bold]", soft_wrap=True, markup=True)
    out.print(
        f"  _DONE: {done}   segments: {report['segment_count']} ({common.size(report['segment_bytes'])})   "
        f"streams: {len(report['streams'])}   records: {records}",
        soft_wrap=True,
    )
    _print_trash(report, out)
    if report["error"]:
        out.print(f"  [red]error:[/red] {escape(report['error'])}", soft_wrap=True, markup=True)
    shared = _common_labels([s["labels"] for s in report["streams"]])
    if shared:
        out.print(f"  labels of every stream: {_format_labels(shared)}", soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("stream_id", justify="right")
    table.add_column("labels" if not shared else "other labels")
    table.add_column("epoch_scale", justify="right")
    table.add_column("value_scale", justify="right")
    table.add_column("records", justify="right")
    table.add_column("first epoch")
    table.add_column("last epoch")
    for s in report["streams"]:
        labels = _format_labels({k: v for k, v in s["labels"].items() if k not in shared})
        n = "-" if s["records"] is None else f"{s['records']:,}"
        table.add_row(
            str(s["stream_id"]),
            labels,
            f"{s['epoch_scale']:g}",
            f"{s['value_scale']:g}",
            n,
            _epoch(s["first_epoch"]),
            _epoch(s["last_epoch"]),
        )
    out.print(table)
    out.print()


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector inspect``: see :func:`register`."""
    paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in args.paths))
    for path in paths:
        common.require_dir(path)
    total = sum(s.stat().st_size for p in paths for s in logdir.segment_files(p))
    reports = []
    with common.progress(err, args.quiet) as progress:
        task = progress.add_task("counting records", total=total if not args.no_count else 0, note="")
        for path in paths:
            reports.append(_inspect_one(path, not args.no_count, args.grace, progress, task))
    if args.json:
        out.print_json(json.dumps(reports))
    else:
        for report in reports:
            _print_report(report, out)
    failed = [r for r in reports if r["error"]]
    for report in failed:
        err.print(f"{PROG}: error: {report['error']}", soft_wrap=True)
    return 1 if failed else 0
