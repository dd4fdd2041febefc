"""``herocollector cleanup``: move the segment files (and optionally ``streams/``) of finished runs into the trash.

The command uses the service's two-phase deletion (:mod:`herocollector.run.trash`): every
``NNNNN.seg.zst`` is renamed to ``NNNNN.seg.zst.trash-<unix time>`` in its run, so nothing
collects it again, and ``herocollector restore`` puts it back. What it trashed is recorded, by
name and identity, in the run's trash manifest (:data:`herocollector.run.trash.TRASH_MANIFEST`,
written atomically before anything is renamed); ``restore`` and ``--purge`` act only on recorded
entries that are still the entries trashed, so a user's file that merely looks like trash is
left alone. ``--purge`` deletes the segments and the recorded trash for good; of an older
version's unrecorded trash, only regular files named like a trashed segment.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from herocollector.cli import common
from herocollector.cli.common import PROG, Subparsers
from herocollector.collector import Collector
from herocollector.errors import MetadataError
from herocollector.run import logdir, trash
from herocollector.run.rundir import RunDirectory

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
    plan: list[tuple[Path, list[Path], Path | None, list[str]]] = []
    for path in paths:
        common.require_dir(path)
        streams = path / logdir.STREAMS_DIR
        segments = logdir.segment_files(path)
        if not (streams.is_dir() or logdir.is_done(path) or segments):
            raise MetadataError("not a logger directory (no streams/, _DONE or segments)", path)
        drop_meta = not args.keep_meta and streams.is_dir() and not streams.is_symlink()
        earlier = [e.name for e in _earlier_trash(path)] if args.purge else []
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
            for name in earlier:
                out.print(f"  would delete {name} (trash)", soft_wrap=True)
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
        for reason in _clean(path, args.keep_meta, args.purge):
            err.print(f"{PROG}: warning: {path}: {reason}", soft_wrap=True)
    folders = "" if args.keep_meta else f" and {nfolders} streams/ folder(s)"
    summary = f"removed {nfiles} segment file(s), {common.size(nbytes)}{folders}, from {len(plan)} run(s), {how}"
    if args.purge:
        summary += f" ({nearlier} earlier trashed item(s) deleted too)" if nearlier else ""
    else:
        summary += " (undo with 'herocollector restore', or delete with 'herocollector cleanup --purge')"
    out.print(summary, soft_wrap=True)
    return 0


def _earlier_trash(path: Path) -> list[trash.TrashEntry]:
    """What ``--purge`` deletes of a run's earlier trash: what its manifest records, and an older version's.

    An older version recorded nothing; of its trash only regular files named like a trashed
    segment are taken (never a folder, which may hold anything, nor a link).
    """
    with RunDirectory(path, absolute=False) as run:
        recorded = trash.recorded_trash(run)
        return [*recorded, *_older_trash(run, recorded)]


def _older_trash(run: RunDirectory, recorded: list[trash.TrashEntry]) -> list[trash.TrashEntry]:
    """An older version's trash in the run (see :func:`_earlier_trash`), as entries to purge."""
    return [trash.TrashEntry(e.name.rsplit(".trash-", 1)[0], e.name, e) for e in trash.unrecorded_trash(run, recorded)]


def _clean(path: Path, keep_meta: bool, purge: bool) -> list[str]:
    """Trash a run's segments (and without ``keep_meta`` ``streams/``), recorded in its manifest; ``purge``: delete.

    Returns:
        What the purge left alone, and why.
    """
    with RunDirectory(path, absolute=False) as run:
        earlier = trash.recorded_trash(run)
        older = _older_trash(run, earlier) if purge else []  # looked for before the run has a manifest
        named = trash.name_trash(run, trash.plan_trash(run, None, keep_meta))
        # Recorded before anything is renamed: an interrupted cleanup leaves only recorded trash, which
        # restore and the purge find; each rename is atomic, so no segment is ever half deleted.
        trash.record_trash(run, [*earlier, *named])
        kept = [*earlier, *trash.move_to_trash(run, named)]
        reasons: list[str] = []
        if purge:
            done, reasons = trash.purge_recorded(run, [*kept, *older])
            gone = {e.name for e in done}
            kept = [e for e in kept if e.name not in gone]
        trash.record_trash(run, kept)
    return reasons
