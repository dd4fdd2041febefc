"""The intake thread outlives any one event: an event the journal cannot take fails alone, the next ones go on.

Before, one event whose metadata JSON cannot hold (a CBOR map with a list as a key reaches the
actor as a dict with a tuple key) or that the journal refused for a reason of its own (a path
SQLite cannot encode) raised on the intake thread and ended it: every later event waited in
memory, never journalled, with nothing said but a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from herocollector import CollectionService, ServiceConfig
from herocollector.journal.base import Announcement, JobState
from herocollector.service.intake import Spool
from herocollector.testing.servers import PostgresTestServer

if TYPE_CHECKING:
    from herocollector.testing.actors import Env

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"


def config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    (tmp_path / "runs").mkdir(exist_ok=True)
    arguments: dict[str, Any] = dict(
        save_template=TEMPLATE,
        output_root=str(tmp_path / "out"),
        allowed_roots=[str(tmp_path / "runs")],
        state_dir=str(tmp_path / "state"),
        scan_interval=None,
        timeout=None,
    )
    return ServiceConfig.from_arguments(**{**arguments, **overrides})


@pytest.fixture
def service(tmp_path: Path) -> Iterator[CollectionService]:
    with CollectionService(config(tmp_path)) as s:
        yield s


def jobs_by_path(service: CollectionService) -> dict[str | None, Any]:
    return {job.path: job for job in service.journal.jobs()}


def test_metadata_with_keys_json_cannot_hold_is_journalled_and_the_intake_goes_on(
    service: CollectionService, tmp_path: Path
) -> None:
    odd = str(tmp_path / "runs" / "odd")
    after = str(tmp_path / "runs" / "after")
    service.announce("logger", {"path": odd, ("x", "y"): 1, "nested": {("a",): [{(1, 2): "v"}]}})
    service.announce("logger", {"path": after, "note": "next"})
    assert service.intake.wait_empty(30)
    jobs = jobs_by_path(service)
    assert jobs[odd].metadata == {"path": odd, "('x', 'y')": 1, "nested": {"('a',)": [{"(1, 2)": "v"}]}}
    assert jobs[after].metadata == {"path": after, "note": "next"}
    assert service.intake._thread.is_alive()


def test_an_event_the_journal_refuses_fails_alone_and_names_its_path(
    service: CollectionService, tmp_path: Path
) -> None:
    before = [str(tmp_path / "runs" / f"before-{n}") for n in range(3)]
    bad = str(tmp_path / "runs" / "bad-\udc80")  # a lone surrogate: SQLite cannot encode it
    after = [str(tmp_path / "runs" / f"after-{n}") for n in range(3)]
    for path in [*before, bad, *after]:  # one batch, or several: each good event is journalled
        service.announce("logger", {"path": path})
    assert service.intake.wait_empty(30)
    jobs = service.journal.jobs()
    assert sorted(job.path for job in jobs if job.path is not None) == sorted(before + after)
    failed = [job for job in jobs if job.path is None]
    assert len(failed) == 1 and failed[0].state == JobState.FAILED
    assert "bad-\\udc80" in (failed[0].error or "") and "UnicodeEncodeError" in (failed[0].error or "")
    assert service.intake._thread.is_alive()
    later = str(tmp_path / "runs" / "later")
    service.announce("logger", {"path": later})
    assert service.intake.wait_empty(30)
    assert service.journal.by_path(later) is not None


def test_an_event_with_a_tuple_key_over_zenoh_does_not_stop_the_events_after_it(env: Env) -> None:
    from herocollector.testing.actors import wait_job

    actor = env.actor()
    hero = env.announcer(actor)
    odd, after = env.run("odd"), env.run("after")
    hero.finished({"path": str(odd), ("x", "y"): 1})  # CBOR carries the list key; it arrives as a tuple
    hero.finished({"path": str(after)})
    assert wait_job(actor, after, JobState.DONE, JobState.FAILED).state == JobState.DONE
    job = wait_job(actor, odd, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    assert job.metadata["('x', 'y')"] == 1


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "in-a-batch"])
def test_a_path_postgresql_cannot_store_fails_alone_and_is_no_outage(
    tmp_path: Path, postgres: PostgresTestServer, alone: bool
) -> None:
    """PostgreSQL refuses a NUL in a text column with an error like an outage's: it was spooled, and replayed for ever."""
    bad = str(tmp_path / "runs" / "nul\x00name")
    good = [] if alone else [str(tmp_path / "runs" / f"good-{n}") for n in range(4)]
    with CollectionService(config(tmp_path, journal=postgres.database())) as service:
        for path in [*good[:2], bad, *good[2:]]:
            service.announce("logger", {"path": path})
        assert service.intake.wait_empty(30)
        jobs = service.journal.jobs()
        assert sorted(job.path for job in jobs if job.path is not None) == sorted(good)
        failed = [job for job in jobs if job.path is None]
        assert len(failed) == 1 and failed[0].state == JobState.FAILED
        assert "nul\\x00name" in (failed[0].error or "") and "NUL" in (failed[0].error or "")
        assert service.intake.spooled == 0
        assert service.health.outage is None
        assert "journal_outage" not in service.status().extra


def test_a_spooled_batch_with_an_event_the_journal_refuses_is_replayed_without_it(
    tmp_path: Path, postgres: PostgresTestServer
) -> None:
    settings = config(tmp_path, journal=postgres.database())
    good = [str(tmp_path / "runs" / f"good-{n}") for n in range(3)]
    bad = str(tmp_path / "runs" / "nul\x00name")
    spool = Spool(settings.state_dir / "spool")
    spool.write([Announcement(path, "logger", {"path": path}) for path in [good[0], bad, *good[1:]]])
    later = str(tmp_path / "runs" / "later")
    spool.write([Announcement(later, "logger", {"path": later})])  # behind it in the spool
    with CollectionService(settings) as service:
        assert service.intake.wait_empty(30)
        jobs = service.journal.jobs()
        assert sorted(job.path for job in jobs if job.path is not None) == sorted([*good, later])
        assert [job.state for job in jobs if job.path is None] == [JobState.FAILED]
        assert service.intake.spooled == 0
