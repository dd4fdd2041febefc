"""The collection service in-process, without HEROS: waiting runs, workers, the catch-up scan,
the state_dir lock, faults (a full disk, a failing journal, hostile labels), shutdown.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector import CollectionService, ServiceConfig
from herocollector.actor.demo import MEASURES, write_simulated_run
from herocollector.errors import ConfigError, StateDirLocked
from herocollector.events import RunCollected, RunFailed
from herocollector.journal.sqlite import Job, JobState
from herocollector.output.pipeline import WriteContext
from herocollector.service.scan import SCAN_SOURCE, finished_runs
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import journal_rows

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"


class Site:
    """Folders of one test and the services it started (closed at its end)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.out = tmp / "out"
        self.state = tmp / "state"
        self.services: list[CollectionService] = []
        self.collected: list[RunCollected] = []
        self.failures: list[RunFailed] = []
        self._seed = 0

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
        )
        arguments.update(overrides)
        return ServiceConfig.from_arguments(**arguments)

    def service(self, **overrides: Any) -> CollectionService:
        service = CollectionService(
            self.config(**overrides), on_collected=self.collected.append, on_failed=self.failures.append
        )
        self.services.append(service)
        return service

    def run(self, name: str, done: bool = True, folder: Path | None = None, **kwargs: Any) -> Path:
        self._seed += 1
        path = (folder or self.runs) / name
        write_simulated_run(path, **{"records": 300, "entities": 2, "seed": self._seed, **kwargs})
        if not done:
            (path / "_DONE").unlink()
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


def job_of(service: CollectionService, path: Path) -> Job | None:
    return service.journal.by_path(str(path))


def wait_state(service: CollectionService, path: Path, *states: JobState, timeout: float = 20.0) -> Job:
    def check() -> Job | None:
        job = job_of(service, path)
        return job if job is not None and job.state in states else None

    return wait_for(check, f"{path.name} to become {'/'.join(states)} (now {job_of(service, path)})", timeout)


# ----------------------------------------------------------------------------------------
# Waiting runs never hold a worker
# ----------------------------------------------------------------------------------------


def test_a_run_without_done_waits_while_others_are_collected(site: Site) -> None:
    service = site.service(workers=1, timeout=None)
    a = site.run("run-a", done=False)
    b, c = site.run("run-b"), site.run("run-c")
    service.submit("logger", {"path": str(a)})
    wait_state(service, a, JobState.WAITING)
    service.submit("logger", {"path": str(b)})
    service.submit("logger", {"path": str(c)})
    for run in (b, c):
        assert wait_state(service, run, JobState.DONE, JobState.FAILED).state == JobState.DONE
    assert job_of(service, a).state == JobState.WAITING and job_of(service, a).attempts == 0
    assert service.status().waiting == 1

    (a / "_DONE").touch()
    done = wait_state(service, a, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE and done.attempts == 1
    wait_for(lambda: len(site.collected) == 3, "three run_collected reports")
    assert sorted(r.path for r in site.collected) == sorted(str(p) for p in (a, b, c))


def test_done_timeout_counts_from_the_announcement_then_retries(site: Site) -> None:
    service = site.service(timeout=300, max_retries=1, retry_delay=0.05)
    run = site.run("late", done=False)
    announced = time.time()
    service.submit("logger", {"path": str(run)})
    job = wait_state(service, run, JobState.FAILED, timeout=10)
    assert "DoneTimeout" in job.error and job.attempts == 2  # one retry, waiting afresh
    assert job.updated - announced >= 0.6
    wait_for(lambda: len(site.failures) == 2, "the second failure to be reported")
    assert [f.final for f in site.failures] == [False, True]
    assert all("no _DONE within 300 ms" in f.error for f in site.failures)

    (run / "_DONE").touch()
    assert service.retry(str(run)) == 1
    assert wait_state(service, run, JobState.DONE, JobState.FAILED).state == JobState.DONE


@pytest.mark.parametrize("timeout", [None, 60_000])
def test_close_is_prompt_whatever_waits(site: Site, timeout: int | None) -> None:
    service = site.service(timeout=timeout)
    waiting = [site.run(f"run-{i}", done=False) for i in range(3)]
    for run in waiting:
        service.submit("logger", run)
    for run in waiting:
        wait_state(service, run, JobState.WAITING)
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 5.0
    assert not any(t.is_alive() for t in service.scheduler._threads)

    reopened = site.service(timeout=timeout)  # the waiting runs are still waiting after a restart
    assert reopened.status().waiting == 3


def test_close_interrupts_a_running_collection_which_stays_pending(site: Site) -> None:
    service = site.service(chunk_bytes=4096)
    run = site.run("big", records=60_000)
    entered = threading.Event()
    release = threading.Event()
    original = service.runner.pipeline.write

    def slow_write(plan: Any, context: WriteContext) -> Any:
        inner = context.guard
        assert inner is not None

        class Slow:
            def check(self) -> None:
                entered.set()
                release.wait(0.01)
                inner.check()

            def before_publish(self) -> None:
                inner.before_publish()

        return original(plan, dataclasses.replace(context, guard=Slow()))

    service.runner.pipeline.write = slow_write  # type: ignore[method-assign]
    service.submit("logger", run)
    assert entered.wait(20)
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 5.0
    assert not list(site.out.rglob("*.tmp"))
    [row] = journal_rows(site.state)
    assert row["state"] == JobState.PENDING and row["attempts"] == 0  # put back, the attempt not counted


# ----------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------


def test_two_workers_collect_two_runs_at_once(site: Site) -> None:
    service = site.service(workers=2)
    both_inside = threading.Barrier(2, timeout=20)
    original = service.runner._write_outputs

    def meet(job: Job, *args: Any) -> Any:
        both_inside.wait()  # only two workers at the same time get past this
        return original(job, *args)

    service.runner._write_outputs = meet  # type: ignore[method-assign]
    runs = [site.run(f"run-{i}") for i in range(2)]
    for run in runs:
        service.submit("logger", run)
    for run in runs:
        assert wait_state(service, run, JobState.DONE, JobState.FAILED).state == JobState.DONE


def test_one_worker_collects_one_run_at_a_time(site: Site) -> None:
    service = site.service(workers=1)
    inside = []
    peak = []
    original = service.runner._write_outputs

    def count(job: Job, *args: Any) -> Any:
        inside.append(job.id)
        peak.append(len(service.scheduler.running()))
        try:
            return original(job, *args)
        finally:
            inside.remove(job.id)

    service.runner._write_outputs = count  # type: ignore[method-assign]
    runs = [site.run(f"run-{i}") for i in range(4)]
    for run in runs:
        service.submit("logger", run)
    assert service.wait_idle(30)
    assert peak and max(peak) == 1


# ----------------------------------------------------------------------------------------
# Catch-up scan
# ----------------------------------------------------------------------------------------


def test_runs_finished_during_downtime_are_collected_at_start(site: Site) -> None:
    first = site.service(scan_interval=300)
    before = site.run("collected-before")
    first.submit("logger", before)
    wait_state(first, before, JobState.DONE)
    first.cleanup(str(before))
    assert job_of(first, before).state == JobState.CLEANED
    first.close()

    missed = [site.run(f"missed-{i}") for i in range(3)]  # their events went into the void
    unfinished = site.run("still-writing", done=False)
    nested = site.run("deep", folder=site.runs / "campaign" / "day-1")  # level 3
    second = site.service(scan_interval=300, scan_depth=3)
    for run in [*missed, nested]:
        job = wait_state(second, run, JobState.DONE, JobState.FAILED)
        assert job.state == JobState.DONE and job.source == SCAN_SOURCE
    assert job_of(second, unfinished) is None  # no _DONE: not journalled by the scan
    assert job_of(second, before).state == JobState.CLEANED  # never collected twice
    assert second.status().last_scan.finished == 5
    assert second.scan().journalled == 0  # a second scan finds nothing new


def test_scan_depth_and_hidden_folders(site: Site) -> None:
    shallow = site.run("a", folder=site.runs / "x")
    deep = site.run("b", folder=site.runs / "x" / "y" / "z")
    hidden = site.run("c", folder=site.runs / ".trash")
    found = set(finished_runs([site.runs], 2))
    assert found == {str(shallow)}
    assert set(finished_runs([site.runs], 3)) == {str(shallow)}
    assert set(finished_runs([site.runs], 4)) == {str(shallow), str(deep)}
    assert str(hidden) not in set(finished_runs([site.runs], 5))


def test_no_scan_without_allowed_roots(site: Site) -> None:
    site.run("r")
    service = site.service(allowed_roots=None, scan_interval=0.05)
    assert "scan" not in [p.name for p in service.scheduler._periodic]
    assert service.journal.jobs() == []


def test_periodic_scan_journals_runs_in_batches_while_collection_goes_on(site: Site) -> None:
    service = site.service(scan_interval=0.2)
    runs = [site.run(f"r-{i}", records=20) for i in range(12)]
    for run in runs:
        wait_state(service, run, JobState.DONE)
    later = site.run("later", records=20)
    assert wait_state(service, later, JobState.DONE).source == SCAN_SOURCE


# ----------------------------------------------------------------------------------------
# One service per state_dir
# ----------------------------------------------------------------------------------------


def test_a_second_service_on_the_same_state_dir_refuses_to_start(site: Site) -> None:
    site.service()
    with pytest.raises(StateDirLocked, match=f"pid {os.getpid()}") as info:
        CollectionService(site.config())
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert str(site.state) in str(info.value)


def test_the_lock_is_released_by_close_and_by_a_killed_process(site: Site) -> None:
    site.service().close()
    site.service().close()  # close released it
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from herocollector.service.statedir import StateDirLock; "
            "StateDirLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
            str(site.state),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StateDirLocked, match=f"pid {holder.pid}"):
            CollectionService(site.config())
    finally:
        holder.kill()
        holder.wait()
    site.service()  # the kernel dropped the dead holder's lock


# ----------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (a real full disk, ENOSPC)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the ENOSPC test (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_one_job_and_leaves_no_temporary_file(site: Site, small_disk: Path) -> None:
    service = site.service(output_root=str(small_disk), max_retries=0)
    big = site.run("big", records=200_000, entities=1)
    service.submit("logger", big)
    job = wait_state(service, big, JobState.FAILED, timeout=60)
    assert "No space left on device" in job.error
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []  # no temporary file keeps the disk full

    small = site.run("small", records=100)
    service.submit("logger", small)
    done = wait_state(service, small, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE, done.error
    assert all(Path(p).is_file() for p in done.outputs)


def test_a_label_aiming_at_another_run_fails_only_its_own_job(site: Site) -> None:
    service = site.service(max_retries=3)
    first = site.run("run-0001", entities=1, labels={"experiment": "e"})
    second = site.run("run-0002", entities=1)
    # run-0001's streams are re-labelled to aim at run-0002's files
    for stream in (first / "streams").glob("*.json"):
        meta = json.loads(stream.read_text())
        if meta["measure"] == "stock":
            stream.write_text(json.dumps({**meta, "measure": "../run-0002/stock"}))
    service.submit("logger", first)
    failed = wait_state(service, first, JobState.FAILED)
    assert "LabelPathError" in failed.error and "../run-0002/stock" in failed.error
    assert failed.attempts == 1  # not retried: the labels of a recorded run do not change
    service.submit("logger", second)
    done = wait_state(service, second, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE, done.error
    assert sorted(Path(p).name for p in done.outputs) == sorted(f"{m}.arrow" for m in MEASURES)
    assert not (site.out / "run-0001").exists()


@pytest.mark.parametrize("value", ["", "."])
def test_empty_or_dot_labels_make_no_hidden_files(site: Site, value: str) -> None:
    service = site.service(save_template="{{ output_root }}/{{ experiment }}.arrow", max_retries=0)
    run = site.run("r", labels={"experiment": value})
    service.submit("logger", run)
    job = wait_state(service, run, JobState.FAILED)
    assert "LabelPathError" in job.error
    assert not site.out.exists() or not any(site.out.rglob("*"))


def test_an_attempt_whose_job_another_actor_holds_now_reports_nothing(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """Fenced out when its outcome is recorded: no failure, progress or retry is announced for a job it lost."""
    from herocollector.errors import SegmentError
    from herocollector.events import RunProgress
    from herocollector.journal.sqlite import open_journal
    from herocollector.service.runner import Failed, Following, JobRunner, PutBack

    journal = open_journal(site.tmp / "fenced.sqlite3")
    progress: list[RunProgress] = []
    failures: list[RunFailed] = []
    runner = JobRunner(site.config(), journal, threading.Event(), site.collected.append, failures.append)
    runner.on_progress = progress.append
    run = site.run("lost")
    journal.submit(str(run), "logger", {})
    stale = journal.take_due(owner="a")
    assert stale is not None
    journal.defer(stale.id, None, "handed on", token=stale.token)
    current = journal.take_due(owner="a")  # the job as its holder has it now: a newer token
    assert current is not None and current.token > stale.token
    chunk = RunProgress(str(run), 1, 10, 10, {}, stale.id)
    with caplog.at_level("WARNING", logger="herocollector"):
        runner.conclude(stale, Failed(SegmentError("damaged", "x.seg.zst", 3), 1))
        runner.conclude(stale, Following(time.time(), chunk))
        runner.conclude(stale, PutBack(None, "later"))
    assert failures == [] and progress == []
    fenced = [r.getMessage() for r in caplog.records if "fenced out" in r.getMessage()]
    assert len(fenced) == 3 and all(m.startswith(f"job {stale.id} for {run}: lease lost") for m in fenced)
    assert not [r for r in caplog.records if "retrying" in r.getMessage() or "deferred" in r.getMessage()]
    assert journal.get(stale.id) == current  # nothing recorded under the stale token
    journal.close()


def test_a_failing_journal_inside_the_runner_is_recorded_later_and_the_worker_lives(site: Site) -> None:
    service = site.service(workers=1)
    original = service.journal.finish
    calls = []

    def broken_once(job_id: int, outputs: dict[str, int], token: int | None = None) -> Job:
        calls.append(job_id)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return original(job_id, outputs, token)

    service.journal.finish = broken_once  # type: ignore[method-assign]
    first = site.run("first")
    service.submit("logger", first)
    assert wait_state(service, first, JobState.DONE, JobState.FAILED).state == JobState.DONE  # recorded again
    second = site.run("second")
    service.submit("logger", second)
    assert wait_state(service, second, JobState.DONE).state == JobState.DONE  # the worker lived on
    assert len(calls) >= 3
    assert all(t.is_alive() for t in service.scheduler._threads)


def test_a_journal_error_taking_jobs_does_not_kill_the_worker(site: Site) -> None:
    service = site.service(workers=1)
    original = service.journal.take_due
    failures = [sqlite3.OperationalError("database is locked")] * 2

    def flaky(now: float | None = None, **lease: Any) -> Job | None:
        if failures:
            raise failures.pop()
        return original(now, **lease)

    service.journal.take_due = flaky  # type: ignore[method-assign]
    run = site.run("r")
    service.submit("logger", run)
    assert wait_state(service, run, JobState.DONE).state == JobState.DONE
    assert not failures


# ----------------------------------------------------------------------------------------
# Outputs, events, metrics
# ----------------------------------------------------------------------------------------


def test_pinned_column_types_give_every_run_one_schema(site: Site) -> None:
    import pyarrow.dataset as ds

    service = site.service(
        save_template="{{ output_root }}/{{ logger_name }}.parquet",
        format="parquet",
        columns={"experiment": "string", "run": "int64"},
    )
    numeric = site.run("numeric", labels={"experiment": 7, "run": 1})
    textual = site.run("textual", labels={"experiment": "seven", "run": 2})
    for run in (numeric, textual):
        service.submit("logger", run)
        assert wait_state(service, run, JobState.DONE, JobState.FAILED).state == JobState.DONE
    table = ds.dataset(str(site.out), format="parquet").to_table()
    assert table.schema.field("experiment").type == pa.string()
    assert sorted(set(table.column("experiment").to_pylist())) == ["7", "seven"]


def test_events_and_metrics(site: Site) -> None:
    service = site.service(max_retries=0)
    good = site.run("good")
    bad = site.runs / "bad"
    bad.mkdir()
    (bad / "_DONE").touch()  # finished, but no streams/
    service.submit("logger", good)
    service.submit("logger", bad)
    service.submit("logger", 42)
    wait_state(service, good, JobState.DONE)
    wait_state(service, bad, JobState.FAILED)
    wait_for(lambda: site.collected, "the run_collected report")
    [collected] = site.collected
    assert collected.path == str(good) and collected.rows == 300 and collected.rows == sum(collected.outputs.values())
    assert collected.job == job_of(service, good).id and collected.seconds > 0 and collected.bytes > 0
    wait_for(lambda: len(site.failures) == 2, "both failures to be reported")
    assert sorted((f.path or "", f.final) for f in site.failures) == [("", True), (str(bad), True)]
    metrics = service.metrics()
    assert (metrics.runs_collected, metrics.rows_collected, metrics.runs_failed) == (1, 300, 2)
    assert metrics.bytes_collected == collected.bytes and metrics.last_latency > 0


def test_the_inventory_of_a_collected_run_is_handed_over_before_the_job_is_done(site: Site) -> None:
    service = site.service()
    seen: list[tuple[int, Any, JobState]] = []

    def record(job: Job, inventory: Any) -> None:
        current = service.journal.get(job.id)
        assert current is not None
        seen.append((job.id, inventory, current.state))

    service.runner.on_inventory = record
    run = site.run("run-1")
    service.submit("logger", run)
    job = wait_state(service, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    [(job_id, inventory, state)] = seen
    assert job_id == job.id and state == JobState.RUNNING  # recorded before the journal says done
    assert inventory.path == run.resolve()
    assert sorted(r.name for r in inventory.segments) == sorted(p.name for p in run.glob("*.seg.zst"))
    assert inventory.segment_bytes == sum(p.stat().st_size for p in run.glob("*.seg.zst"))
