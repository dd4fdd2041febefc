"""The event intake: no event is lost in a burst or while the journal is down, and none is journalled twice.

Events go to an in-memory queue and are journalled in batches (one transaction for many);
while the journal cannot be reached they are spooled durably in ``state_dir`` and replayed
when it answers again, followed at once by a catch-up scan. Real PostgreSQL servers are
stopped and started again for the outages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector import CollectionService, ServiceConfig
from herocollector.actor.demo import write_simulated_run
from herocollector.journal.base import Announcement, JobState
from herocollector.journal.sqlite import SqliteJournal
from herocollector.service.intake import Spool
from herocollector.testing.actors import wait_for
from herocollector.testing.servers import PostgresTestServer

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"


def config(tmp: Path, **overrides: Any) -> ServiceConfig:
    arguments: dict[str, Any] = dict(
        save_template=TEMPLATE,
        output_root=str(tmp / "out"),
        allowed_roots=[str(tmp / "runs")],
        state_dir=str(tmp / "state"),
        scan_interval=None,
        retry_delay=0.05,
        max_retries=3,
    )
    arguments.update(overrides)
    return ServiceConfig.from_arguments(**arguments)


def runs(tmp: Path, count: int, records: int = 200) -> list[Path]:
    made = []
    for n in range(count):
        path = tmp / "runs" / f"run-{n:04d}"
        write_simulated_run(path, records=records, entities=1, seed=n)
        made.append(path)
    return made


@pytest.fixture
def outage_server() -> Iterator[PostgresTestServer]:
    """A PostgreSQL server of this test alone, so that stopping it disturbs no other test."""
    with PostgresTestServer() as server:
        yield server


def test_submit_many_is_one_transaction_with_the_same_rules_as_submit(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.sqlite3")
    try:
        results = journal.submit_many(
            [
                Announcement("/runs/a", "logger-1", {"n": 1}),
                Announcement("/runs/b", "logger-1", {"n": 2}),
                Announcement("/runs/a", "logger-2", {"n": 3}),  # the same run again, in the same batch
            ]
        )
        assert [(job.path, due) for job, due in results] == [("/runs/a", True), ("/runs/b", True), ("/runs/a", True)]
        a = journal.by_path("/runs/a")
        assert a is not None and (a.source, a.metadata, a.state) == ("logger-2", {"n": 3}, JobState.PENDING)
        assert len(journal.jobs()) == 2
        assert journal.submit_many([]) == []
    finally:
        journal.close()


def test_a_burst_of_large_events_from_many_threads_is_journalled_completely(tmp_path: Path) -> None:
    """5,000 events of 3 KB from 5 threads, no scan: every one is journalled from its event."""
    with CollectionService(config(tmp_path, workers=1, timeout=None)) as service:
        payload = "x" * 3000

        def announce(logger: int) -> None:
            for n in range(1000):
                service.announce(f"logger-{logger}", {"path": f"/nowhere/l{logger}/run-{n:04d}", "note": payload})

        threads = [threading.Thread(target=announce, args=(i,)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert service.intake.wait_empty(120), "the intake did not catch up"
        jobs = service.journal.jobs()
        assert len({job.path for job in jobs}) == 5000
        assert all(job.metadata.get("note") == payload for job in jobs if job.path)


def test_events_while_the_journal_is_down_are_spooled_then_collected_once(
    tmp_path: Path, outage_server: PostgresTestServer
) -> None:
    made = runs(tmp_path, 20)
    url = outage_server.database()
    with CollectionService(config(tmp_path, journal=url, lease_timeout=5.0)) as service:
        outage_server.pause()
        try:
            for run in made:
                service.announce("logger", {"path": str(run)})
            assert service.intake.wait_empty(60)
            wait_for(lambda: service.intake.spooled >= 1, "the events to be spooled", timeout=60)
            status = service.status()
            assert "journal_outage" in status.extra, "status() does not name the outage"
            assert status.to_dict()["journal_outage"]["spooled_batches"] >= 1
        finally:
            outage_server.resume()
        wait_for(
            lambda: service.counts()[JobState.DONE] == 20,
            "the 20 runs announced during the outage to be collected",
            timeout=120,
        )
        jobs = service.journal.jobs()
        assert sorted(job.path for job in jobs) == sorted(str(run) for run in made)
        assert all(job.state == JobState.DONE for job in jobs)
        assert service.intake.spooled == 0
        assert "journal_outage" not in service.status().extra


def test_a_spool_left_by_an_earlier_process_is_replayed_at_start(tmp_path: Path) -> None:
    made = runs(tmp_path, 3)
    settings = config(tmp_path)
    Spool(settings.state_dir / "spool").write(
        [Announcement(str(run), "logger-before-a-crash", {"path": str(run)}) for run in made]
    )
    with CollectionService(settings) as service:
        assert service.wait_idle(60)
        jobs = service.journal.jobs()
        assert sorted(job.path for job in jobs) == sorted(str(run) for run in made)
        assert {job.source for job in jobs} == {"logger-before-a-crash"}
        assert all(job.state == JobState.DONE for job in jobs)
        assert service.intake.spooled == 0


def test_the_catch_up_scan_runs_at_once_when_the_journal_returns(
    tmp_path: Path, outage_server: PostgresTestServer
) -> None:
    url = outage_server.database()
    settings = config(tmp_path, journal=url, scan_interval=3600.0, lease_timeout=5.0)
    with CollectionService(settings) as service:
        wait_for(lambda: service.scanner.last is not None, "the start-up scan", timeout=60)
        outage_server.pause()
        try:
            made = runs(tmp_path, 2)  # finished while the journal is down, and never announced
            wait_for(lambda: service.status().extra.get("journal_outage") is not None, "the outage", timeout=60)
        finally:
            outage_server.resume()
        wait_for(
            lambda: service.counts()[JobState.DONE] == 2,
            "the runs finished during the outage to be found by the scan",
            timeout=120,
        )
        assert sorted(job.path for job in service.journal.jobs()) == sorted(str(run) for run in made)
