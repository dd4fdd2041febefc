"""Hostile runs through the whole service: each fails its own job, naming the entry, and never blocks a worker.

The runs are real ``DataLogger`` runs (:mod:`herocollector.testing.runs`) with real faults put in
them: FIFOs, directories, symlinks outside ``allowed_roots``, ``/dev/zero``. A normal run beside
them is collected, and ``close()`` joins every thread the service started.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector.config import ServiceConfig
from herocollector.decode.workers import POOL, THREAD_NAME
from herocollector.journal.sqlite import Job, JobState
from herocollector.output import pipeline as pipeline_module
from herocollector.service.core import CollectionService
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import build_run

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"


class Site:
    """The folders of one test: runs inside the roots, a folder outside them, outputs, state."""

    def __init__(self, tmp: Path) -> None:
        self.runs = tmp / "runs"
        self.outside = tmp / "outside"
        self.out = tmp / "out"
        self.state = tmp / "state"
        self.runs.mkdir()
        self.outside.mkdir()
        self.fifos: list[Path] = []
        self._seed = 100

    def run(self, name: str) -> Path:
        self._seed += 1
        return build_run(self.runs / name, seed=self._seed, n_records=200).path

    def mkfifo(self, path: Path) -> Path:
        os.mkfifo(path)
        self.fifos.append(path)
        return path

    def config(self, **overrides: Any) -> ServiceConfig:
        arguments: dict[str, Any] = dict(
            save_template=TEMPLATE,
            output_root=str(self.out),
            allowed_roots=[str(self.runs)],
            state_dir=str(self.state),
            retry_delay=0.05,
            max_retries=1,
            backoff=20,
            scan_interval=None,
            workers=2,
        )
        arguments.update(overrides)
        return ServiceConfig.from_arguments(**arguments)

    def release_fifos(self) -> None:
        """Open every FIFO for writing once, so that a reader blocked on one (a bug) ends."""
        for fifo in self.fifos:
            try:
                os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
            except OSError:
                pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    try:
        yield site
    finally:
        site.release_fifos()


def _fifo_segment(site: Site, run: Path) -> tuple[Path, str]:
    return site.mkfifo(run / "00001.seg.zst"), "FIFO"


def _directory_segment(site: Site, run: Path) -> tuple[Path, str]:
    (run / "00001.seg.zst").mkdir()
    return run / "00001.seg.zst", "directory"


def _segment_symlinked_outside(site: Site, run: Path) -> tuple[Path, str]:
    secret = site.outside / "shadow"
    shutil.copyfile(next(run.glob("*.seg.zst")), secret)
    (run / "00001.seg.zst").symlink_to(secret)
    return run / "00001.seg.zst", "symlink"


def _fifo_stream_file(site: Site, run: Path) -> tuple[Path, str]:
    return site.mkfifo(run / "streams" / "00000099.json"), "FIFO"


def _stream_file_to_dev_zero(site: Site, run: Path) -> tuple[Path, str]:
    (run / "streams" / "00000099.json").symlink_to("/dev/zero")
    return run / "streams" / "00000099.json", "symlink"


def _streams_symlinked_outside(site: Site, run: Path) -> tuple[Path, str]:
    foreign = site.outside / "streams"
    shutil.move(str(run / "streams"), foreign)
    (run / "streams").symlink_to(foreign, target_is_directory=True)
    return run / "streams", "symlink"


def _huge_integer_label(site: Site, run: Path) -> tuple[Path, str]:
    file = sorted((run / "streams").glob("*.json"))[0]
    file.write_text(file.read_text(encoding="utf-8")[:-1] + ', "serial": ' + "1" * 5000 + "}", encoding="utf-8")
    return file, "'serial'"


FAULTS: dict[str, Callable[[Site, Path], tuple[Path, str]]] = {
    "fifo-segment": _fifo_segment,
    "directory-segment": _directory_segment,
    "segment-symlinked-outside": _segment_symlinked_outside,
    "fifo-stream-file": _fifo_stream_file,
    "stream-file-to-dev-zero": _stream_file_to_dev_zero,
    "streams-symlinked-outside": _streams_symlinked_outside,
    "huge-integer-label": _huge_integer_label,
}


def _job(service: CollectionService, path: Path) -> Job | None:
    return service.journal.by_path(str(path))


def test_each_hostile_run_fails_its_own_job_and_the_good_one_is_collected(site: Site) -> None:
    before = set(threading.enumerate())
    bad: dict[str, tuple[Path, Path, str]] = {}
    for name, fault in FAULTS.items():
        run = site.run(name)
        entry, needle = fault(site, run)
        bad[name] = (run, entry, needle)
    good = site.run("good")
    service = CollectionService(site.config())
    try:
        for run, _, _ in bad.values():
            service.collect(str(run))
        service.collect(str(good))

        def settled() -> bool:
            jobs = [_job(service, run) for run, _, _ in bad.values()] + [_job(service, good)]
            return all(job is not None and job.state in (JobState.FAILED, JobState.DONE) for job in jobs)

        wait_for(settled, "every job to settle", timeout=120)
        for name, (run, entry, needle) in bad.items():
            job = _job(service, run)
            assert job is not None and job.state == JobState.FAILED, name
            assert job.error is not None and str(entry) in job.error and needle in job.error, (name, job.error)
            assert job.outputs == {}, name
            assert not (site.out / run.name).exists(), name
        done = _job(service, good)
        assert done is not None and done.state == JobState.DONE
        rows = sum(pa.ipc.open_file(path).read_all().num_rows for path in done.outputs)
        assert rows == 200 and sum(done.outputs.values()) == 200
        assert not any(site.outside.rglob("*.arrow"))
    finally:
        service.close()
    # The process's decode pool (decode/workers.POOL) keeps its threads for a while after a job,
    # for the next run of any service: none of them may still be working, and nothing else may stay.
    assert POOL.wait_idle(30), "a decode part still running after the service closed"
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive() and t.name != THREAD_NAME]
    assert leftover == []
    assert not any(site.out.rglob(".*.tmp"))


def test_a_run_announced_under_three_spellings_is_one_job(site: Site) -> None:
    run = site.run("real")
    alias = site.runs / "alias"
    alias.symlink_to(run, target_is_directory=True)
    outside = site.outside / "link"  # outside the roots, but leading into them
    outside.symlink_to(run, target_is_directory=True)
    service = CollectionService(site.config())
    try:
        jobs = [service.collect(str(path)) for path in (alias, outside, run)]
        assert len({job.id for job in jobs}) == 1
        wait_for(
            lambda: (j := _job(service, run)) is not None and j.state == JobState.DONE, "the run collected", timeout=60
        )
        assert service.journal.counts()[JobState.DONE] == 1
    finally:
        service.close()


@pytest.mark.parametrize("change", ["removed", "moved-away"])
def test_a_run_that_goes_away_mid_collection_fails_and_publishes_nothing(
    site: Site, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    run = build_run(site.runs / "going", seed=77, n_records=3000, rotate_bytes=4000).path
    assert len(list(run.glob("*.seg.zst"))) > 3
    route = pipeline_module.route_batch  # type: ignore[attr-defined]
    fired = threading.Event()

    def route_then_change(*args: Any, **kwargs: Any) -> Any:
        if not fired.is_set():  # the first batch: the run is mid-collection
            fired.set()
            if change == "removed":
                shutil.rmtree(run)
            else:
                shutil.move(str(run), str(site.outside / "going"))
        return route(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "route_batch", route_then_change)
    service = CollectionService(site.config(max_retries=0, chunk_bytes=4096))
    try:
        service.collect(str(run))
        job = wait_for(
            lambda: (j := _job(service, run)) is not None and j.state in (JobState.FAILED, JobState.DONE) and j,
            "the job to end",
            timeout=60,
        )
        assert fired.is_set()
        assert job.state == JobState.FAILED and job.error is not None
        assert "RunChanged" in job.error and str(run) in job.error
        assert job.outputs == {}
        published = [p for p in site.out.rglob("*") if p.is_file()] if site.out.exists() else []
        assert published == []  # no output, no manifest, no temporary file
    finally:
        service.close()


@pytest.mark.parametrize("kind", ["a file", "a name over 255 bytes"])
def test_a_run_path_no_retry_can_fix_fails_at_once(site: Site, kind: str) -> None:
    if kind == "a file":
        path = site.runs / "not-a-run"
        path.write_text("a file, not a run directory", encoding="utf-8")
        expected = "not a directory"
    else:
        path = site.runs / ("x" * 300)
        expected = "name longer than the filesystem allows"
    service = CollectionService(site.config())
    try:
        job = service.collect(str(path))
        wait_for(
            lambda: (j := service.journal.get(job.id)) is not None and j.state == JobState.FAILED,
            f"the job of {kind} to fail",
        )
        failed = service.journal.get(job.id)
        assert failed is not None and failed.attempts == 1, "retried although no retry can succeed"
        assert expected in (failed.error or "") and "RunRefused" in (failed.error or "")
    finally:
        service.close()
