"""Two-phase cleanup (``herocollector.run.trash``): soft delete, list, restore, purge."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from herocollector import Collector
from herocollector.actor.demo import write_simulated_run
from herocollector.cli.main import main
from herocollector.run.logdir import segment_files
from herocollector.run.rundir import RunDirectory
from herocollector.run.trash import TRASH_MANIFEST, purge, recorded_trash, restore, soft_delete, trashed
from herocollector.testing.runs import MemoryWriter

NOW = 1_700_000_000.0


@pytest.fixture
def run(tmp_path: Path) -> Path:
    path = tmp_path / "runs" / "run-1"
    write_simulated_run(path, records=200, entities=2, seed=1, rotate_bytes=1000, backend="data_logger")
    assert len(segment_files(path)) > 1
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def collect_rows(run: Path) -> int:
    writer = MemoryWriter()
    assert Collector([run]).collect(writer) is True
    return int(writer.table().num_rows)


def test_soft_delete_renames_segments_only(run: Path) -> None:
    segments = [p.name for p in segment_files(run)]
    streams_before = names(run / "streams")
    moved = soft_delete(run, now=NOW + 0.7)
    assert sorted(p.name for p in moved) == sorted(f"{s}.trash-{int(NOW)}" for s in segments)
    assert all(p.parent == run and p.is_file() for p in moved)
    assert segment_files(run) == []
    assert names(run / "streams") == streams_before  # keep_meta=True by default
    assert (run / "_DONE").exists()
    assert trashed(run) == [(run / f"{s}.trash-{int(NOW)}", float(int(NOW))) for s in sorted(segments)]


def test_soft_delete_default_stamp_is_now(run: Path) -> None:
    before = int(time.time())
    moved = soft_delete(run)
    after = int(time.time())
    stamps = {stamp for _, stamp in trashed(run)}
    assert len(stamps) == 1 and before <= stamps.pop() <= after
    assert len(moved) == len(trashed(run))


def test_soft_delete_without_keep_meta_moves_streams(run: Path) -> None:
    streams_files = names(run / "streams")
    moved = soft_delete(run, keep_meta=False, now=NOW)
    assert run / f"streams.trash-{int(NOW)}" in moved
    assert not (run / "streams").exists()
    assert names(run / f"streams.trash-{int(NOW)}") == streams_files
    assert (run / f"streams.trash-{int(NOW)}", float(int(NOW))) in trashed(run)


def test_soft_delete_never_moves_a_symlinked_streams(run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "outside" / "streams"
    foreign.parent.mkdir()
    (run / "streams").rename(foreign)
    (run / "streams").symlink_to(foreign, target_is_directory=True)
    moved = soft_delete(run, keep_meta=False, now=NOW)
    assert all(p.name.endswith(f".seg.zst.trash-{int(NOW)}") for p in moved)
    assert (run / "streams").is_symlink() and foreign.is_dir() and any(foreign.iterdir())
    assert not any("streams.trash" in n for n in names(run))


def test_soft_delete_of_a_symlinked_segment_moves_the_link(run: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.seg.zst"
    precious.write_bytes(b"not yours")
    (run / "99999.seg.zst").symlink_to(precious)
    soft_delete(run, now=NOW)
    link = run / f"99999.seg.zst.trash-{int(NOW)}"
    assert link.is_symlink() and precious.read_bytes() == b"not yours"


def test_a_trashed_run_is_not_collected(run: Path) -> None:
    assert collect_rows(run) == 200
    soft_delete(run, now=NOW)
    assert segment_files(run) == []
    assert collect_rows(run) == 0  # streams are there, segments are not


def test_trashed_ignores_other_files(run: Path) -> None:
    (run / "notes.txt.trash-123").write_text("not ours")
    (run / "00000.seg.zst.trash-abc").write_text("no stamp")
    (run / "00000.seg.zst.trash-").write_text("no stamp")
    assert trashed(run) == []
    assert trashed(run / "missing") == []


def test_restore_puts_everything_back(run: Path) -> None:
    before = {p.name: p.read_bytes() for p in segment_files(run)}
    streams_files = names(run / "streams")
    soft_delete(run, keep_meta=False, now=NOW)
    restored = restore(run)
    assert sorted(p.name for p in restored) == sorted([*before, "streams"])
    assert {p.name: p.read_bytes() for p in segment_files(run)} == before
    assert names(run / "streams") == streams_files
    assert trashed(run) == []
    assert collect_rows(run) == 200
    assert restore(run) == []  # nothing left


def test_restore_does_not_overwrite_an_existing_file(run: Path) -> None:
    first = segment_files(run)[0]
    soft_delete(run, now=NOW)
    first.write_bytes(b"a newer file of that name")
    restored = restore(run)
    assert first not in restored
    assert first.read_bytes() == b"a newer file of that name"
    assert (run / f"{first.name}.trash-{int(NOW)}").exists()  # still in the trash
    assert trashed(run) == [(run / f"{first.name}.trash-{int(NOW)}", float(int(NOW)))]


def test_purge_respects_the_grace_period(run: Path) -> None:
    old = soft_delete(run, now=NOW - 100)
    extra = run / "77777.seg.zst"
    extra.write_bytes(b"x")
    recent = soft_delete(run, now=NOW - 10)
    assert [p.name for p in recent] == [f"77777.seg.zst.trash-{int(NOW) - 10}"]

    assert purge(run, grace=1000, now=NOW) == []
    assert len(trashed(run)) == len(old) + 1
    deleted = purge(run, grace=50, now=NOW)
    assert sorted(deleted) == sorted(old)
    assert not any(p.exists() for p in old)
    assert [p for p, _ in trashed(run)] == recent
    assert purge(run, grace=10, now=NOW) == recent  # exactly grace old: due
    assert trashed(run) == []
    assert (run / "streams").is_dir() and (run / "_DONE").exists()


def test_purge_with_zero_grace_deletes_at_once(run: Path) -> None:
    soft_delete(run, keep_meta=False)
    purge(run, grace=0)
    assert trashed(run) == [] and segment_files(run) == []
    assert names(run) == ["_DONE"]


def test_purge_deletes_a_trashed_streams_dir(run: Path) -> None:
    soft_delete(run, keep_meta=False, now=NOW)
    trashed_streams = run / f"streams.trash-{int(NOW)}"
    assert trashed_streams.is_dir()
    deleted = purge(run, grace=0, now=NOW)
    assert trashed_streams in deleted and not trashed_streams.exists()
    assert names(run) == ["_DONE"]


def test_purge_never_follows_a_symlink(run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    precious_dir = outside / "streams"
    precious_dir.mkdir()
    (precious_dir / "keep.json").write_text("{}")
    precious_file = outside / "precious.seg.zst"
    precious_file.write_bytes(b"not yours")
    stamp = int(NOW) - 100
    # trash entries that are symlinks (a dir and a file) ...
    (run / f"streams.trash-{stamp}").symlink_to(precious_dir, target_is_directory=True)
    (run / f"88888.seg.zst.trash-{stamp}").symlink_to(precious_file)
    # ... and a real trashed streams dir holding a symlink to the outside
    real = run / f"streams.trash-{stamp + 1}"
    real.mkdir()
    (real / "link").symlink_to(outside, target_is_directory=True)

    deleted = purge(run, grace=10, now=NOW)
    assert len(deleted) == 3
    assert not os.path.lexists(run / f"streams.trash-{stamp}")
    assert not os.path.lexists(run / f"88888.seg.zst.trash-{stamp}")
    assert not real.exists()
    assert (precious_dir / "keep.json").read_text() == "{}"
    assert precious_file.read_bytes() == b"not yours"
    assert names(outside) == ["precious.seg.zst", "streams"]


# -- the command line records what it trashed and acts only on that ---------------------------


def _cli(*args: str | Path) -> int:
    status: int = main([str(a) for a in args])
    return status


def _entries(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``folder`` (nothing followed): inode and mtime."""
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(top, name))
            found[os.path.relpath(os.path.join(top, name), folder)] = (st.st_ino, st.st_mtime_ns)
    return found


def _plant_lookalikes(run: Path) -> None:
    (run / "x.trash-0").write_text("a user's file")
    (run / "77777.seg.zst.trash-0").mkdir()  # a folder named like a trashed segment
    (run / "77777.seg.zst.trash-0" / "notes.txt").write_text("keep")
    (run / "streams.trash-0").mkdir()
    (run / "streams.trash-0" / "keep.json").write_text("{}")


def test_the_cli_records_its_trash_in_the_run_atomically(run: Path) -> None:
    segments = {p.name: p.read_bytes() for p in segment_files(run)}
    assert _cli("cleanup", run, "--no-keep-meta") == 0
    with RunDirectory(run, absolute=False) as directory:
        recorded = recorded_trash(directory)
    assert sorted(e.original for e in recorded) == sorted([*segments, "streams"])
    for entry in recorded:
        assert entry.name.startswith(f"{entry.original}.trash-") and entry.entry.same(os.lstat(run / entry.name))
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the manifest's temporary file is gone
    assert _cli("restore", run) == 0
    assert {p.name: p.read_bytes() for p in segment_files(run)} == segments and (run / "streams").is_dir()
    with RunDirectory(run, absolute=False) as directory:
        assert recorded_trash(directory) == []  # nothing left in the trash, and so recorded


def test_cli_purge_and_restore_leave_a_users_lookalikes_alone(run: Path) -> None:
    assert _cli("cleanup", run) == 0
    _plant_lookalikes(run)
    before = {k: v for k, v in _entries(run).items() if ".trash-0" in k}
    assert _cli("restore", run) == 0
    assert not (run / "77777.seg.zst").exists() and not (run / "x").exists()
    assert _cli("cleanup", run, "--purge") == 0
    after = _entries(run)
    assert {k: after.get(k) for k in before} == before  # old trash.purge() removes the folders
    assert segment_files(run) == []
    assert sorted(p.name for p in run.glob("*.trash-*")) == ["77777.seg.zst.trash-0", "streams.trash-0", "x.trash-0"]


def test_a_recorded_entry_replaced_after_it_was_trashed_is_neither_restored_nor_purged(run: Path) -> None:
    assert _cli("cleanup", run) == 0
    with RunDirectory(run, absolute=False) as directory:
        first = recorded_trash(directory)[0]
    trashed_file = run / first.name
    held = trashed_file.open("rb")  # held open, so the new file cannot get the old inode number
    try:
        trashed_file.unlink()
        trashed_file.write_bytes(b"a user's file, put where the trash was")
    finally:
        held.close()
    assert _cli("restore", run) == 0
    assert not (run / first.original).exists() and trashed_file.read_bytes().startswith(b"a user's")
    assert _cli("cleanup", run) == 0 and _cli("cleanup", run, "--purge") == 0
    assert trashed_file.read_bytes() == b"a user's file, put where the trash was"


def test_a_damaged_trash_manifest_is_an_error_naming_it(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("cleanup", run) == 0
    (run / TRASH_MANIFEST).write_text('{"entries": [["only one field"]]}')
    assert _cli("restore", run) == 1
    assert str(run / TRASH_MANIFEST) in capsys.readouterr().err
    (run / TRASH_MANIFEST).unlink()
    os.mkfifo(run / TRASH_MANIFEST)  # never blocks: opened with O_NONBLOCK, refused as not a regular file
    assert _cli("cleanup", run, "--purge", "--no-wait") == 1
    assert "not a regular file" in capsys.readouterr().err
