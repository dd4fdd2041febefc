"""``herocollector cleanup``: move the segment files (and optionally ``streams/``) of finished runs into the trash.

The command uses the service's two-phase deletion (:mod:`herocollector.run.trash`): every
``NNNNN.seg.zst`` is renamed to ``NNNNN.seg.zst.trash-<unix time>`` in its run, so nothing
collects it again, and ``herocollector restore`` puts it back. ``--purge`` deletes the segments,
and whatever was in the run's trash, for good. It acts on whatever the paths name now (the
caller's own folders); the service's cleanup, which must not trust paths, records what it
trashes instead.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from rich.console import Console

from herocollector.cli import common
from herocollector.cli.common import Subparsers
from herocollector.collector import Collector
from herocollector.errors import MetadataError
from herocollector.run import logdir, trash

NAME = "cleanup"


def register(subparsers: Subparsers) -> None:
    """Add ``cleanup`` to the ``herocollector`` parser."""
    cleanup = subparsers.add_parser(
        NAME,
        help="move the segment files (and optionally streams/) of finished logger directories into the trash",
        description=(
            "Move the *.seg.zst segment files of logger directories into the trash (renamed to "
            "<name>.trash-<unix time> in the run, restorable with 'herocollector restore'), after waiting for "
            "_DONE in all of them; with --no-keep-meta also streams/; with --purge delete them, and the runs' "
            "earlier trash, for good. Nothing is touched if waiting times out."
        ),
    )
    cleanup.add_argument("paths", nargs="+", metavar="PATH", help="logger directories")
    cleanup.add_argument("--no-keep-meta", dest="keep_meta", action="store_false", help="also remove streams/")
    cleanup.add_argument(
        "--purge", action="store_true", help="delete for good instead of trashing (also empties the runs' trash)"
    )
    cleanup.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for _DONE (dangerous)")
    cleanup.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    common.wait_options(cleanup)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector cleanup``: see :func:`register`."""
    paths = Collector([os.path.abspath(p) for p in args.paths]).paths
    plan: list[tuple[Path, list[Path], Path | None, list[Path]]] = []
    for path in paths:
        common.require_dir(path)
        streams = path / logdir.STREAMS_DIR
        segments = logdir.segment_files(path)
        if not (streams.is_dir() or logdir.is_done(path) or segments):
            raise MetadataError("not a logger directory (no streams/, _DONE or segments)", path)
        drop_meta = not args.keep_meta and streams.is_dir() and not streams.is_symlink()
        earlier = [p for p, _ in trash.trashed(path)] if args.purge else []
        plan.append((path, segments, streams if drop_meta else None, earlier))
    nfiles = sum(len(segments) for _, segments, _, _ in plan)
    nbytes = sum(s.stat().st_size for _, segments, _, _ in plan for s in segments)
    nfolders = sum(1 for _, _, meta, _ in plan if meta is not None)
    nearlier = sum(len(earlier) for *_, earlier in plan)
    how = "for good" if args.purge else "into the trash"
    if args.dry_run:
        for path, segments, meta, earlier in plan:
            note = ""
            if not logdir.is_done(path):
                note = "  (no _DONE yet: cleanup waits for it)" if args.wait else "  (no _DONE!)"
            out.print(f"{path}{note}", soft_wrap=True)
            for segment in segments:
                out.print(f"  would remove {segment.name}  ({common.size(segment.stat().st_size)})", soft_wrap=True)
            if meta is not None:
                out.print(f"  would remove {logdir.STREAMS_DIR}/", soft_wrap=True)
            for entry in earlier:
                out.print(f"  would delete {entry.name} (trash)", soft_wrap=True)
        trashed = f" and {nearlier} trashed item(s)" if nearlier else ""
        out.print(
            f"dry run: would remove {nfiles} segment file(s), {common.size(nbytes)}{trashed}, "
            f"from {len(plan)} run(s), {how}",
            soft_wrap=True,
        )
        return 0
    with common.progress(err, False, bytes_bar=False) as progress:
        if args.wait:
            common.wait_for_done(paths, args.backoff, args.timeout, progress)
    for path, _, _, _ in plan:
        # Trashed first even with --purge: each rename is atomic, so an interrupted purge leaves
        # every segment either in place or in the trash, never half deleted.
        trash.soft_delete(path, keep_meta=args.keep_meta)
        if args.purge:
            trash.purge(path, grace=0.0, now=math.inf)  # no grace: every entry, whatever its time stamp
    folders = "" if args.keep_meta else f" and {nfolders} streams/ folder(s)"
    summary = f"removed {nfiles} segment file(s), {common.size(nbytes)}{folders}, from {len(plan)} run(s), {how}"
    if args.purge:
        summary += f" ({nearlier} earlier trashed item(s) deleted too)" if nearlier else ""
    else:
        summary += " (undo with 'herocollector restore', or delete with 'herocollector cleanup --purge')"
    out.print(summary, soft_wrap=True)
    return 0
