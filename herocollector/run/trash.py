"""Two-phase cleanup: segments are first renamed into the trash, deleted only after a grace period.

``soft_delete`` renames ``00000.seg.zst`` to ``00000.seg.zst.trash-<unix time>`` (and, without
``keep_meta``, ``streams`` to ``streams.trash-<unix time>``) inside the logger directory. A
trashed file no longer matches ``*.seg.zst``, so nothing collects it again, yet it is still
there: :func:`restore` renames it back. :func:`purge` deletes trash older than the grace
period. Renames within a directory are atomic, so a crash leaves every file either in place
or in the trash, never half deleted.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from herocollector.run.logdir import SEGMENT_SUFFIX, STREAMS_DIR, segment_files

_TRASH = re.compile(r"^(?P<name>.+)\.trash-(?P<stamp>\d+)$")


def _trashed_name(path: Path, now: float) -> Path:
    return path.with_name(f"{path.name}.trash-{int(now)}")


def soft_delete(run: Path, keep_meta: bool = True, now: float | None = None) -> list[Path]:
    """Move a run's segments (and without ``keep_meta`` its ``streams/``) into the trash.

    Args:
        run: The logger directory.
        keep_meta: Keep ``streams/`` in place.
        now: Time stamp of the deletion (default: now).

    Returns:
        The trash paths created.
    """
    now = time.time() if now is None else now
    moved = []
    targets = segment_files(run)
    streams = run / STREAMS_DIR
    if not keep_meta and streams.is_dir() and not streams.is_symlink():
        targets.append(streams)
    for path in targets:
        trashed = _trashed_name(path, now)
        path.rename(trashed)
        moved.append(trashed)
    return moved


def trashed(run: Path) -> list[tuple[Path, float]]:
    """The trash of a run: each trashed path with the time it was trashed."""
    found = []
    for path in sorted(run.iterdir()) if run.is_dir() else []:
        match = _TRASH.match(path.name)
        if match and (match["name"].endswith(SEGMENT_SUFFIX) or match["name"] == STREAMS_DIR):
            found.append((path, float(match["stamp"])))
    return found


def restore(run: Path) -> list[Path]:
    """Move a run's trash back in place (where the original name is free).

    Returns:
        The restored paths.
    """
    restored = []
    for path, _ in trashed(run):
        match = _TRASH.match(path.name)
        if match is None:  # trashed() lists only names that match
            continue
        original = path.with_name(match["name"])
        if not original.exists():
            path.rename(original)
            restored.append(original)
    return restored


def purge(run: Path, grace: float, now: float | None = None) -> list[Path]:
    """Delete the trash of a run that is older than ``grace`` seconds.

    Returns:
        The deleted paths.
    """
    now = time.time() if now is None else now
    deleted = []
    for path, stamp in trashed(run):
        if now - stamp < grace:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        deleted.append(path)
    return deleted
