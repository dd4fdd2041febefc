"""Cleanup under attack, with real files: a run path swapped for a symlink (to an uncollected run,
to a folder outside ``allowed_roots``) between collection and cleanup or before the purge, and
user files that look like trash. Every file's path, inode and mtime is snapshotted before and
after: nothing may change except the collected run's own segments.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.config import ServiceConfig
from herocollector.journal.sqlite import Job, JobState
from herocollector.run.logdir import segment_files
from herocollector.run.trash import rename_noreplace
from herocollector.service import cleanup as cleanup_module
from herocollector.service.core import CollectionService
from herocollector.testing.actors import wait_for

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"

Snapshot = dict[str, tuple[int, int, str]]


class Site:
    """Folders of one test (runs inside allowed_roots, a folder outside) and its services."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.outside = tmp / "outside"
        self.outside.mkdir()
        self.services: list[CollectionService] = []
        self._seed = 0

    def service(self, **overrides: Any) -> CollectionService:
        arguments: dict[str, Any] = dict(
            save_template=TEMPLATE,
            output_root=str(self.tmp / "out"),
            allowed_roots=[str(self.runs)],
            state_dir=str(self.tmp / "state"),
            retry_delay=0.05,
            max_retries=0,
            backoff=20,
            scan_interval=None,
            cleanup_grace=3600,
        )
        arguments.update(overrides)
        service = CollectionService(ServiceConfig.from_arguments(**arguments))
        self.services.append(service)
        return service

    def run(self, name: str, folder: Path | None = None, **kwargs: Any) -> Path:
        self._seed += 1
        path = (folder or self.runs) / name
        write_simulated_run(path, **{"records": 200, "entities": 2, "seed": self._seed, **kwargs})
        return path

    def close(self) -> None:
        for service in self.services:
            service.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


def collect(service: CollectionService, run: Path) -> Job:
    reported = service.metrics().runs_collected
    service.collect(str(run))

    def done() -> Job | None:
        job = service.journal.by_path(str(run))
        return job if job is not None and job.state in (JobState.DONE, JobState.FAILED) else None

    job: Job = wait_for(done, f"{run} to be collected")
    assert job.state == JobState.DONE, job.error
    wait_for(lambda: service.cleaner.ledger.inventory(str(run)), f"the inventory of {run}")
    # The collection is reported after "done", and the report records what the run is if no
    # inventory is there (a run collected by an older version). A test that then changes the
    # ledger must wait for the report, or the report can undo the change.
    wait_for(lambda: service.metrics().runs_collected > reported, f"the report of {run}'s collection")
    return job


def current(service: CollectionService, job: int | Path) -> Job:
    """A job as the journal has it now (by id or by run)."""
    found = service.journal.get(job) if isinstance(job, int) else service.journal.by_path(str(job))
    assert found is not None
    return found


def snapshot(*folders: Path) -> Snapshot:
    """Every entry below ``folders`` (symlinks not followed): inode, mtime and kind."""
    found: Snapshot = {}
    for folder in folders:
        for top, dirs, files in os.walk(folder):
            for name in [*dirs, *files]:
                path = os.path.join(top, name)
                st = os.lstat(path)
                kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
                # A folder's mtime changes with any entry renamed in it; its entries are listed themselves.
                found[path] = (st.st_ino, 0 if kind == "dir" else st.st_mtime_ns, kind)
    return found


def plant_trash_lookalikes(folder: Path, stamp: int = 0) -> None:
    """User files and folders whose names look like the cleaner's trash."""
    (folder / f"x.trash-{stamp}").write_text("a user's file")
    (folder / f"00000.seg.zst.trash-{stamp}").write_bytes(b"a user's file named like trash")
    (folder / f"y.trash-{stamp}").mkdir()
    (folder / f"y.trash-{stamp}" / "keep.txt").write_text("keep")
    (folder / f"streams.trash-{stamp}").mkdir()
    (folder / f"streams.trash-{stamp}" / "keep.json").write_text("{}")


def make_due(service: CollectionService, job: Job) -> None:
    """End the grace period of a job's trash now."""
    service.journal.mark_cleaned(job.id, time.time() - 1)


def collected_segments(run: Path) -> set[str]:
    return {str(p) for p in segment_files(run)}


# ----------------------------------------------------------------------------------------
# The run path swapped between collection and cleanup
# ----------------------------------------------------------------------------------------


def test_a_run_swapped_for_a_symlink_to_an_uncollected_run_is_not_cleaned(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    job = collect(service, run)
    other = site.run("run-b")  # never collected
    plant_trash_lookalikes(other)
    run.rename(site.runs / "run-a-moved")
    run.symlink_to(other, target_is_directory=True)
    before = snapshot(site.runs, site.outside)

    assert service.cleanup(str(run)) is False
    assert service.cleanup(str(run), keep_meta=False) is False
    assert service.cleanup() is False  # "every collected run" includes it: refused too
    assert snapshot(site.runs, site.outside) == before
    assert current(service, job.id).state == JobState.DONE


def test_a_run_swapped_for_a_symlink_outside_allowed_roots_is_not_cleaned(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    job = collect(service, run)
    victim = site.run("victim", folder=site.outside)
    plant_trash_lookalikes(victim)
    run.rename(site.runs / "run-a-moved")
    run.symlink_to(victim, target_is_directory=True)
    before = snapshot(site.runs, site.outside)

    assert service.cleanup(str(run)) is False
    assert service.cleanup(str(run), force=True, keep_meta=False) is False
    assert snapshot(site.runs, site.outside) == before
    assert current(service, job.id).state == JobState.DONE


def test_a_run_replaced_by_another_directory_of_the_same_name_is_not_cleaned(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    collect(service, run)
    run.rename(site.runs / "run-a-moved")
    site.run("run-a")  # a new run where the collected one was: other inodes, same names
    before = snapshot(site.runs)
    assert service.cleanup(str(run)) is False
    assert snapshot(site.runs) == before


# ----------------------------------------------------------------------------------------
# The run path swapped after cleanup, before the purge
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["uncollected", "outside"])
def test_the_purge_deletes_nothing_when_the_run_path_leads_elsewhere(site: Site, target: str) -> None:
    service = site.service()
    run = site.run("run-a")
    job = collect(service, run)
    assert service.cleanup(str(run)) is True
    trash_names = sorted(p.name for p in run.iterdir() if ".trash-" in p.name)
    assert trash_names and not segment_files(run)

    elsewhere = site.run("run-b") if target == "uncollected" else site.run("victim", folder=site.outside)
    for name in trash_names:  # exactly the names the cleaner recorded, as user files
        (elsewhere / name).write_bytes(b"a file that only looks like the trash")
    plant_trash_lookalikes(elsewhere)
    moved = site.runs / "run-a-moved"
    run.rename(moved)
    run.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(site.runs, site.outside)

    make_due(service, job)
    service.cleaner.purge_due()
    assert snapshot(site.runs, site.outside) == before
    assert service.restore(str(run)) is False
    assert snapshot(site.runs, site.outside) == before
    # tried again later, not forgotten: the trash is still recorded as pending
    assert current(service, job.id).trash_until is not None

    # the real run back in its place: the purge deletes its trash, and only that
    run.unlink()
    moved.rename(run)
    before = snapshot(site.runs, site.outside)
    make_due(service, job)
    service.cleaner.purge_due()
    after = snapshot(site.runs, site.outside)
    assert set(before) - set(after) == {str(run / name) for name in trash_names}
    assert all(after[path] == before[path] for path in after)
    assert current(service, job.id).trash_until is None


# ----------------------------------------------------------------------------------------
# User files that look like trash, inside the run
# ----------------------------------------------------------------------------------------


def test_trash_lookalikes_inside_a_run_survive_cleanup_and_purge(site: Site) -> None:
    service = site.service(cleanup_grace=0)  # trashed and purged at once
    run = site.run("run-a", rotate_bytes=1000, backend="data_logger")
    collect(service, run)
    segments = collected_segments(run)
    assert len(segments) > 1
    plant_trash_lookalikes(run)
    # the very names the trash rename would pick in the next seconds, taken by user files
    first = min(segments, key=lambda p: Path(p).name)
    now = int(time.time())
    for stamp in range(now, now + 5):
        Path(f"{first}.trash-{stamp}").write_bytes(b"taken")
    before = snapshot(site.runs, site.outside)

    assert service.cleanup(str(run)) is True
    after = snapshot(site.runs, site.outside)
    assert set(before) - set(after) == segments  # the collected segments, gone for good
    assert set(after) <= set(before)  # nothing new left behind
    assert all(after[path] == before[path] for path in after)  # nothing else touched
    assert current(service, run).state == JobState.CLEANED


def test_keep_meta_false_purges_only_the_files_streams_held(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    job = collect(service, run)
    plant_trash_lookalikes(run)
    assert service.cleanup(str(run), keep_meta=False) is True
    trashed_streams = [p for p in run.iterdir() if p.name.startswith("streams.trash-") and p.name != "streams.trash-0"]
    assert len(trashed_streams) == 1
    added = trashed_streams[0] / "added-later.txt"
    added.write_text("not the cleaner's")
    keep = {path: entry for path, entry in snapshot(run).items() if ".trash-0" in path or path == str(added)}

    make_due(service, job)
    service.cleaner.purge_due()
    after = snapshot(run)
    assert {path: after.get(path) for path in keep} == keep  # the lookalikes and the added file, untouched
    assert sorted(Path(p).name for p in after if Path(p).parent == trashed_streams[0]) == ["added-later.txt"]
    assert not segment_files(run) and not (run / "streams").exists()
    assert current(service, job.id).trash_until is None


# ----------------------------------------------------------------------------------------
# A run that changed after its collection
# ----------------------------------------------------------------------------------------


def test_a_segment_added_after_collection_stops_the_cleanup(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    collect(service, run)
    (run / "77777.seg.zst").write_bytes(b"data that was never collected")
    before = snapshot(run)
    assert service.cleanup(str(run)) is False
    assert snapshot(run) == before


def test_a_segment_rewritten_in_place_after_collection_stops_the_cleanup(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    collect(service, run)
    segment = segment_files(run)[0]
    stamp = segment.stat().st_mtime_ns
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))  # same inode, same size, other bytes
    os.utime(segment, ns=(stamp + 1_000_000, stamp + 1_000_000))  # a later mtime, whatever the clock's grain
    before = snapshot(run)
    assert service.cleanup(str(run)) is False
    assert snapshot(run) == before


def test_a_segment_replaced_after_collection_stops_the_cleanup(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    collect(service, run)
    segment = segment_files(run)[0]
    data = segment.read_bytes()
    with segment.open("rb"):  # held open, so the new file cannot get the old inode number
        segment.unlink()
        segment.write_bytes(data)  # same name, same bytes, another file
    before = snapshot(run)
    assert service.cleanup(str(run)) is False
    assert snapshot(run) == before


def test_a_restored_run_can_be_cleaned_again_and_restore_touches_only_its_trash(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    collect(service, run)
    segments = {p.name: p.read_bytes() for p in segment_files(run)}
    assert service.cleanup(str(run)) is True
    plant_trash_lookalikes(run)  # "00000.seg.zst.trash-0" must not be restored as 00000.seg.zst
    before = snapshot(run)
    assert service.restore(str(run)) is True
    assert {p.name: p.read_bytes() for p in segment_files(run)} == segments
    after = snapshot(run)
    assert all(after[p] == before[p] for p in before if ".trash-0" in p)
    assert service.cleanup(str(run)) is True and not segment_files(run)


def test_a_users_streams_trash_lookalike_makes_no_logger_directory_for_restore(site: Site) -> None:
    service = site.service()
    run, other = site.run("run-a"), site.run("run-b")
    collect(service, run)
    collect(service, other)
    assert service.cleanup(str(run)) is True and service.cleanup(str(other), keep_meta=False) is True
    shutil.rmtree(run / "streams")  # no logger directory any more, but for a user's folder named like trash
    plant_trash_lookalikes(run)
    before = snapshot(run)
    assert service.restore(str(run)) is False
    assert snapshot(run) == before and not segment_files(run)
    assert not (other / "streams").exists()
    assert service.restore(str(other)) is True  # a streams/ the cleaner trashed itself does count
    assert (other / "streams").is_dir() and segment_files(other)


# ----------------------------------------------------------------------------------------
# Every run, in pages and in the background
# ----------------------------------------------------------------------------------------


def test_cleanup_of_every_run_in_the_background_pages_the_journal(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cleanup_module, "PAGE", 2)
    pages: list[int] = []
    service = site.service()
    runs = [site.run(f"run-{i}") for i in range(5)]
    for run in runs:
        collect(service, run)
    original = service.journal.done_jobs_page

    def counted(after_id: int, limit: int) -> list[Job]:
        pages.append(limit)
        return original(after_id, limit)

    monkeypatch.setattr(service.journal, "done_jobs_page", counted)
    started = service.start_cleanup()
    assert started.total == 5 and started.running
    assert service.wait_cleanup(30) is True
    progress = service.status().extra["cleanup"]
    assert (progress["running"], progress["seen"], progress["cleaned"], progress["refused"]) == (False, 5, 5, 0)
    assert pages == [2, 2, 2, 2]  # three pages of at most two jobs, then an empty one
    assert all(not segment_files(run) for run in runs)
    assert service.journal.counts()[JobState.CLEANED] == 5


def test_a_run_cleaned_the_moment_it_is_done_waits_for_its_inventory(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = site.service()
    run = site.run("run-a")
    cleaner = service.cleaner
    recording, waiting = threading.Event(), threading.Event()
    record, wait = cleaner.record_collected, cleaner._wait_for_inventory

    def late_record(*args: Any) -> bool:
        recording.wait(30)  # the collection is reported only once the cleanup waits for it
        return record(*args)

    def noted_wait(path: str) -> Any:
        waiting.set()
        return wait(path)

    # The collection's own record (before "done") failed; the look right after it is late.
    monkeypatch.setattr(cleaner, "record_inventory", lambda job, inventory: None)
    monkeypatch.setattr(cleaner, "record_collected", late_record)
    monkeypatch.setattr(cleaner, "_wait_for_inventory", noted_wait)
    service.collect(str(run))
    wait_for(lambda: current(service, run).state == JobState.DONE, "the job to be done")
    assert cleaner.ledger.inventory(str(run)) is None
    answers: list[bool] = []
    worker = threading.Thread(target=lambda: answers.append(service.cleanup(str(run))))
    worker.start()
    try:
        wait_for(waiting.is_set, "the cleanup to wait for the inventory")
    finally:
        recording.set()
        worker.join(30)
    assert answers == [True] and not segment_files(run)


def test_rename_noreplace_never_replaces(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()  # an empty folder, which a plain rename would replace
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert rename_noreplace(fd, "a", "b") is False
        assert rename_noreplace(fd, "d", "e") is False
        assert rename_noreplace(fd, "a", "c") is True
    finally:
        os.close(fd)
    assert (tmp_path / "b").read_text() == "b" and (tmp_path / "c").read_text() == "a"
    assert (tmp_path / "d").is_dir() and (tmp_path / "e").is_dir()


def test_a_fifo_named_like_a_segment_is_left_alone_and_blocks_nothing(site: Site) -> None:
    service = site.service(cleanup_grace=0)
    run = site.run("run-a")
    collect(service, run)
    segments = collected_segments(run)
    os.mkfifo(run / "99999.seg.zst")  # never opened: opening a FIFO for reading blocks
    before = snapshot(site.runs)
    assert service.cleanup(str(run)) is True
    after = snapshot(site.runs)
    assert set(before) - set(after) == segments and all(after[p] == before[p] for p in after)
    assert (run / "99999.seg.zst").is_fifo()


def test_a_run_without_a_record_of_its_collection_needs_force(site: Site) -> None:
    service = site.service()
    run = site.run("run-a")
    collect(service, run)
    service.cleaner.ledger.forget_inventory(str(run))  # as collected by an older version
    before = snapshot(site.runs)
    assert service.cleanup(str(run)) is False
    assert snapshot(site.runs) == before
    assert service.cleanup(str(run), force=True) is True  # still verified first, then what is there now
    assert not segment_files(run) and current(service, run).state == JobState.CLEANED
    assert service.restore(str(run)) is True and segment_files(run)


def test_a_full_state_dir_stops_the_cleanup_before_anything_is_renamed(site: Site) -> None:
    state = site.tmp / "small-state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    service: CollectionService | None = None
    try:
        service = site.service(state_dir=str(state), journal=str(site.tmp / "journal.sqlite3"))
        site.services.remove(service)  # closed here, before the unmount
        run = site.run("run-a")
        collect(service, run)
        filler = state / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as full:
                while True:
                    os.write(fd, b"\0" * 65536)
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        before = snapshot(site.runs)
        assert service.cleanup(str(run)) is False  # the ledger cannot record the trash: nothing renamed
        assert snapshot(site.runs) == before
        assert current(service, run).state == JobState.DONE
        filler.unlink()
        assert service.cleanup(str(run)) is True and not segment_files(run)
        assert service.restore(str(run)) is True and segment_files(run)
    finally:
        if service is not None:
            service.close()
        subprocess.run(["umount", str(state)], check=True)


def test_the_inventory_is_what_the_collection_read(site: Site) -> None:
    service = site.service()
    run = site.run("run-a", rotate_bytes=1000, backend="data_logger")
    job = collect(service, run)
    assert service.cleaner.ledger.inventory_source(str(run), job.id) == "read"  # not a look afterwards
    inventory = service.cleaner.ledger.inventory(str(run))
    assert inventory is not None
    st = run.stat()
    assert (inventory.dev, inventory.ino) == (st.st_dev, st.st_ino)
    assert {s.name: (s.ino, s.size) for s in inventory.segments} == {
        p.name: (p.stat().st_ino, p.stat().st_size) for p in segment_files(run)
    }
