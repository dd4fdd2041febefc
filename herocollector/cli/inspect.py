"""``herocollector inspect``: the streams, segments, ``_DONE`` marker and record counts of logger directories.

Counting decodes every segment with the collector's decoder, so a damaged segment is reported
(named, with the offset) the way ``collect`` would report it, while what could be read is shown.
"""

from __future__ import annotations

import argparse
import json
import os
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
from herocollector.run import logdir
from herocollector.run.catalogue import Stream, load_streams

NAME = "inspect"


def register(subparsers: Subparsers) -> None:
    """Add ``inspect`` to the ``herocollector`` parser."""
    inspect = subparsers.add_parser(
        NAME,
        help="show the streams, segments, _DONE and record counts of logger directories",
        description=(
            "Show the streams (id, labels, scales), segments, _DONE marker and record counts of logger directories."
        ),
    )
    inspect.add_argument("paths", nargs="+", metavar="PATH", help="logger directories")
    inspect.add_argument("--no-count", action="store_true", help="do not decode the segments to count records")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.add_argument("-q", "--quiet", action="store_true", help="no progress display")


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
        f"  _DONE: {done}   segments: {report['segment_count']} ({common.size(report['segment_bytes'])})   "
        f"streams: {len(report['streams'])}   records: {records}",
        soft_wrap=True,
    )
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
    for s in report["streams"]:
        labels = _format_labels({k: v for k, v in s["labels"].items() if k not in shared})
        n = "-" if s["records"] is None else f"{s['records']:,}"
        table.add_row(str(s["stream_id"]), labels, f"{s['epoch_scale']:g}", f"{s['value_scale']:g}", n)
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
