"""``herocollector restore``: put back what ``herocollector cleanup`` moved into a run's trash.

Every ``<name>.trash-<unix time>`` of a segment or of ``streams/`` in the run is renamed back to
``<name>`` (:func:`herocollector.run.trash.restore`). An entry whose original name is taken again
(the logger wrote a new segment of that name) is left in the trash and reported.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console

from herocollector.cli import common
from herocollector.cli.common import PROG, Subparsers
from herocollector.collector import Collector
from herocollector.run import trash

NAME = "restore"


def register(subparsers: Subparsers) -> None:
    """Add ``restore`` to the ``herocollector`` parser."""
    restore = subparsers.add_parser(
        NAME,
        help="put back the segment files (and streams/) that cleanup moved into the trash",
        description=(
            "Rename the trash of logger directories (<name>.trash-<unix time>, what 'herocollector cleanup' "
            "left without --purge) back to the original names. An entry whose original name is taken is "
            "left in the trash, and the command exits with status 1."
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
        restored = trash.restore(path)
        total += len(restored)
        for entry in restored:
            out.print(f"{path}: restored {entry.name}", soft_wrap=True)
        blocked += [str(p) for p, _ in trash.trashed(path)]
    out.print(f"restored {total} item(s) in {len(paths)} run(s)", soft_wrap=True)
    if blocked:
        err.print(
            f"{PROG}: error: {len(blocked)} item(s) left in the trash, their original name is taken: "
            + ", ".join(blocked),
            soft_wrap=True,
        )
        return 1
    return 0
