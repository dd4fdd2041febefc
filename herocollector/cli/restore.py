"""``herocollector restore``: put back what ``herocollector cleanup`` moved into a run's trash.

Every entry the run's trash manifest (:data:`herocollector.run.trash.TRASH_MANIFEST`) records,
``<name>.trash-<unix time>`` of a segment or of ``streams/``, is renamed back to ``<name>`` if it is
still the entry trashed (:func:`herocollector.run.trash.restore_recorded`); a user's file that
merely looks like trash is never touched. An entry whose original name is taken again (the
logger wrote a new segment of that name) is left in the trash, still recorded, and reported.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from herocollector.cli import common
from herocollector.cli.common import PROG, Subparsers
from herocollector.collector import Collector
from herocollector.run import trash
from herocollector.run.rundir import RunDirectory

NAME = "restore"


def register(subparsers: Subparsers) -> None:
    """Add ``restore`` to the ``herocollector`` parser."""
    restore = subparsers.add_parser(
        NAME,
        help="put back the segment files (and streams/) that cleanup moved into the trash",
        description=(
            "Rename the trash of logger directories (<name>.trash-<unix time>, what 'herocollector cleanup' "
            "left without --purge and recorded in the run) back to the original names. An entry whose original "
            "name is taken is left in the trash, and the command exits with status 1."
        ),
    )
    restore.add_argument("paths", nargs="+", metavar="PATH", help="logger directories")


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector restore``: see :func:`register`."""
    paths = Collector([os.path.abspath(p) for p in args.paths]).paths
    for path in paths:
        common.require_dir(path)
    total = 0
    blocked: list[str] = []
    for path in paths:
        restored, left = _restore(path)
        total += len(restored)
        for entry in restored:
            out.print(f"{path}: restored {entry.original}", soft_wrap=True)
        blocked += [str(path / e.name) for e in left]
    out.print(f"restored {total} item(s) in {len(paths)} run(s)", soft_wrap=True)
    if blocked:
        err.print(
            f"{PROG}: error: {len(blocked)} item(s) left in the trash, their original name is taken: "
            + ", ".join(blocked),
            soft_wrap=True,
        )
        return 1
    return 0


def _restore(path: Path) -> tuple[list[trash.TrashEntry], list[trash.TrashEntry]]:
    """Put back the entries the run's trash manifest records, each only if it is still the entry trashed.

    Returns:
        The entries put back, and those left in the trash because their original name is taken
        (still recorded). An entry that is gone or was replaced is no longer ours: forgotten.
    """
    with RunDirectory(path, absolute=False) as run:
        entries = trash.recorded_trash(run)
        back = {e.name for e in trash.restore_recorded(run, entries)}
        left = []
        for entry in entries:
            st = None if entry.name in back else run.lstat(entry.name)
            if st is not None and entry.entry.same(st):
                left.append(entry)
        trash.record_trash(run, left)
    return [e for e in entries if e.name in back], left
