"""``herocollector cleanup``: remove the segment files (and optionally ``streams/``) of finished runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from herocollector.cli import common
from herocollector.cli.common import Subparsers
from herocollector.collector import Collector
from herocollector.errors import CollectorError
from herocollector.run import logdir

NAME = "cleanup"


def register(subparsers: Subparsers) -> None:
    """Add ``cleanup`` to the ``herocollector`` parser."""
    cleanup = subparsers.add_parser(
        NAME,
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
    common.wait_options(cleanup)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector cleanup``: see :func:`register`."""
    paths = Collector([os.path.abspath(p) for p in args.paths]).paths
    plan: list[tuple[Path, list[Path], Path | None]] = []
    for path in paths:
        common.require_dir(path)
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
                out.print(f"  would remove {segment.name}  ({common.size(segment.stat().st_size)})", soft_wrap=True)
            if meta is not None:
                out.print(f"  would remove {logdir.STREAMS_DIR}/", soft_wrap=True)
        out.print(f"dry run: would remove {nfiles} segment file(s), {common.size(nbytes)}, from {len(plan)} run(s)")
        return 0
    with common.progress(err, False, bytes_bar=False) as progress:
        if args.wait:
            common.wait_for_done(paths, args.backoff, args.timeout, progress)
        if not Collector(paths).cleanup(
            keep_meta=args.keep_meta, wait_for_done=args.wait, backoff=args.backoff, timeout=args.timeout
        ):
            raise CollectorError("timed out waiting for _DONE; nothing removed")
    folders = "" if args.keep_meta else f" and {sum(1 for *_, s in plan if s is not None)} streams/ folder(s)"
    out.print(
        f"removed {nfiles} segment file(s), {common.size(nbytes)}{folders}, from {len(plan)} run(s)", soft_wrap=True
    )
    return 0
