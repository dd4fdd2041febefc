"""The actor's two-phase cleanup (trash, grace, purge, restore), the journal migration, and
run claims between in-process actors.

Actors are built as in ``test_actor.py``: real Zenoh sessions without multicast scouting and
a realm of their own, driven by ``feed``. Waiting is done on conditions with deadlines.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.archiver import CollectorArchiver
from herocollector.actor.demo import MEASURES
from herocollector.journal.sqlite import Job, JobState, SqliteJournal
from herocollector.output.files import read_provenance
from herocollector.run.claims import CLAIM_FILE, COLLECTED_FILE
from herocollector.run.logdir import segment_files
from herocollector.run.trash import trashed
from herocollector.testing.actors import RECORDS, TIMEOUT, Env, collected, wait_for, wait_job


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def contents(paths: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths}


# ----------------------------------------------------------------------------------------
# Cleanup into the trash, restore, purge
# ----------------------------------------------------------------------------------------


def test_cleanup_moves_segments_into_the_trash_and_restore_brings_them_back(env: Env) -> None:
    actor = env.actor(cleanup_grace=3600)
    run = env.run("run-1", rotate_bytes=1000, backend="data_logger")
    segments = contents(segment_files(run))
    assert len(segments) > 1
    job = collected(actor, run)
    outputs = {p: Path(p).read_bytes() for p in job.outputs}

    started = time.time()
    assert actor.cleanup(str(run)) is True
    assert segment_files(run) == []
    in_trash = trashed(run)
    assert sorted(p.name.rsplit(".trash-", 1)[0] for p, _ in in_trash) == sorted(segments)
    assert all(started - 1 <= stamp <= time.time() for _, stamp in in_trash)
    assert (run / "streams").is_dir() and (run / "_DONE").exists()
    cleaned = actor.service.journal.get(job.id)
    assert cleaned.state == JobState.CLEANED
    assert started + 3600 <= cleaned.trash_until <= time.time() + 3600
    status = actor.status()
    assert status["counts"][JobState.CLEANED] == 1
    assert status["pending_deletion"] == [{"path": str(run), "delete_after": cleaned.trash_until}]
    json.dumps(status)
    # a cleaned run is not collected again
    actor.feed("logger-x", {"path": str(run)})
    assert actor.service.journal.get(job.id).state == JobState.CLEANED and actor.is_queue_drained()

    assert actor.restore(str(run)) is True
    assert contents(segment_files(run)) == segments
    assert trashed(run) == []
    again = actor.service.journal.get(job.id)
    assert again.state == JobState.DONE and again.trash_until is None
    assert actor.status()["pending_deletion"] == []
    assert {p: Path(p).read_bytes() for p in job.outputs} == outputs  # outputs untouched throughout

    # a restored run can be cleaned again, and "every collected run" includes it
    assert actor.cleanup() is True
    assert segment_files(run) == [] and len(trashed(run)) == len(segments)
    assert actor.service.journal.get(job.id).state == JobState.CLEANED
    assert [d["path"] for d in actor.status()["pending_deletion"]] == [str(run)]


def test_cleanup_keep_meta_false_trashes_streams_and_restores_it(env: Env) -> None:
    actor = env.actor(cleanup_grace=3600)
    run = env.run("run-1")
    collected(actor, run)
    streams = names(run / "streams")
    assert actor.cleanup(str(run), keep_meta=False) is True
    assert not (run / "streams").exists()
    assert any(p.name.startswith("streams.trash-") for p, _ in trashed(run))
    assert actor.restore(str(run)) is True
    assert names(run / "streams") == streams and segment_files(run)


def test_restore_is_refused_outside_allowed_roots(env: Env) -> None:
    actor = env.actor(cleanup_grace=3600)
    victim = env.run("victim", folder=env.outside)
    (victim / "00000.seg.zst").rename(victim / "00000.seg.zst.trash-1")
    assert actor.restore(str(victim)) is False
    assert actor.restore(f"{env.runs}/../outside/victim") is False
    assert not (victim / "00000.seg.zst").exists()


def test_purge_loop_deletes_the_trash_after_the_grace_period(env: Env) -> None:
    actor = env.actor(cleanup_grace=0.2)
    run = env.run("run-1")
    job = collected(actor, run)
    assert actor.cleanup(str(run)) is True
    assert segment_files(run) == [] and trashed(run)  # in the trash first
    wait_for(lambda: trashed(run) == [], "the purge loop to delete the trash")
    wait_for(lambda: actor.service.journal.get(job.id).trash_until is None, "the journal to record the purge")
    assert actor.status()["pending_deletion"] == []
    assert actor.service.journal.get(job.id).state == JobState.CLEANED
    assert names(run) == ["_DONE", "streams"]
    assert actor.restore(str(run)) is False  # nothing left to restore
    assert actor.service.journal.get(job.id).state == JobState.CLEANED  # and the run stays cleaned


def test_cleanup_grace_zero_deletes_at_once(env: Env) -> None:
    actor = env.actor(cleanup_grace=0)
    run = env.run("run-1")
    job = collected(actor, run)
    assert actor.cleanup(str(run), keep_meta=False) is True
    assert names(run) == ["_DONE"]  # no trash, no streams
    cleaned = actor.service.journal.get(job.id)
    assert cleaned.state == JobState.CLEANED and cleaned.trash_until is None
    assert actor.status()["pending_deletion"] == []
    # nothing to restore: the run stays cleaned
    assert actor.restore(str(run)) is False
    assert actor.service.journal.get(job.id).state == JobState.CLEANED


def test_cleanup_after_collect(env: Env) -> None:
    actor = env.actor(cleanup_after_collect=True, cleanup_grace=3600)
    run = env.run("run-1")
    segments = contents(segment_files(run))
    actor.feed("logger-x", {"path": str(run)})
    job = wait_job(actor, run, JobState.CLEANED, JobState.FAILED)
    assert job.state == JobState.CLEANED, job.error
    assert job.rows == RECORDS and len(job.outputs) == len(MEASURES)
    assert all(Path(p).is_file() for p in job.outputs)
    assert segment_files(run) == [] and len(trashed(run)) == len(segments)
    assert job.trash_until is not None
    assert [d["path"] for d in actor.status()["pending_deletion"]] == [str(run)]
    assert actor.restore(str(run)) is True
    assert contents(segment_files(run)) == segments


def test_forced_cleanup_of_a_failed_run_is_trashed_but_stays_failed(env: Env) -> None:
    actor = env.actor(cleanup_grace=3600)
    run = env.run("run-1")
    segment = segment_files(run)[0]
    segment.write_bytes(b"\xff" * 64 + segment.read_bytes()[64:])
    actor.feed("logger-x", {"path": str(run)})
    wait_job(actor, run, JobState.FAILED)
    assert actor.cleanup(str(run)) is False
    assert actor.cleanup(str(run), force=True) is True
    job = actor.service.journal.by_path(str(run))
    assert job.state == JobState.FAILED and job.trash_until is not None  # a forced cleanup does not collect
    assert [d["path"] for d in actor.status()["pending_deletion"]] == [str(run)]
    assert actor.restore(str(run)) is True
    job = actor.service.journal.by_path(str(run))
    assert job.state == JobState.FAILED and job.trash_until is None and segment_files(run)


def test_pending_deletion_survives_a_restart_and_is_purged_then(env: Env) -> None:
    first = env.actor(cleanup_grace=3600)
    run = env.run("run-1")
    job = collected(first, run)
    assert first.cleanup(str(run)) is True
    env.stop(first)
    # the grace period ran out while no actor was running
    with sqlite3.connect(env.state / "journal.sqlite3") as db:
        db.execute("UPDATE jobs SET trash_until = ? WHERE id = ?", (time.time() - 1, job.id))
    db.close()
    second = env.actor(cleanup_grace=0.1)
    wait_for(lambda: trashed(run) == [], "the restarted actor to purge the trash")
    wait_for(lambda: second.service.journal.get(job.id).trash_until is None, "the journal to record the purge")


# ----------------------------------------------------------------------------------------
# Journal migration
# ----------------------------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    path         TEXT UNIQUE,
    source       TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    rows         INTEGER,
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    next_attempt REAL
);
CREATE TABLE outputs (
    path   TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    rows   INTEGER NOT NULL
);
CREATE INDEX jobs_state ON jobs(state);
"""


def test_journal_migrates_an_old_journal(tmp_path: Path) -> None:
    file = tmp_path / "state" / "journal.sqlite3"
    file.parent.mkdir()
    db = sqlite3.connect(file)
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO jobs (path, source, metadata, state, attempts, rows, created, updated) "
        "VALUES ('/runs/old', 'logger-x', '{\"path\": \"/runs/old\"}', 'done', 1, 42, 1.0, 2.0)"
    )
    db.execute("INSERT INTO outputs (path, job_id, rows) VALUES ('/out/old.arrow', 1, 42)")
    db.execute(
        "INSERT INTO jobs (path, source, metadata, state, attempts, error, created, updated, next_attempt) "
        "VALUES ('/runs/retry', 'logger-x', '{}', 'pending', 1, 'boom', 1.0, 2.0, 3.0)"
    )
    db.commit()
    db.close()

    journal = SqliteJournal(file)
    try:
        columns = [row["name"] for row in journal._db.execute("PRAGMA table_info(jobs)")]
        assert columns[-5:] == ["trash_until", "deadline", "token", "lease_owner", "lease_until"]
        old = journal.by_path("/runs/old")
        assert (old.id, old.state, old.attempts, old.rows, old.created, old.updated) == (
            1,
            JobState.DONE,
            1,
            42,
            1.0,
            2.0,
        )
        assert old.metadata == {"path": "/runs/old"} and old.outputs == {"/out/old.arrow": 42}
        assert old.trash_until is None
        assert journal.by_path("/runs/retry").next_attempt == 3.0
        assert journal.in_trash() == []
        journal.mark_cleaned(old.id, 123.0)
        assert journal.get(old.id).state == JobState.CLEANED and journal.get(old.id).trash_until == 123.0
        assert [j.path for j in journal.in_trash()] == ["/runs/old"]
        new, queued = journal.submit("/runs/new", "logger-y", {})
        assert queued and new.id == 3
    finally:
        journal.close()

    reopened = SqliteJournal(file)  # migrating is done once; opening again is harmless
    try:
        assert reopened.get(1).trash_until == 123.0
        assert [row["name"] for row in reopened._db.execute("PRAGMA table_info(jobs)")].count("trash_until") == 1
        assert reopened.counts()[JobState.CLEANED] == 1 and reopened.counts()[JobState.PENDING] == 2
    finally:
        reopened.close()


def test_mark_cleaned_only_turns_done_into_cleaned(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.sqlite3")
    try:
        job, _ = journal.submit("/runs/a", "x", {})
        journal.mark_cleaned(job.id, 10.0)
        assert journal.get(job.id).state == JobState.PENDING and journal.get(job.id).trash_until == 10.0
        journal.start(job.id)
        journal.finish(job.id, {})
        journal.mark_cleaned(job.id, None)
        assert journal.get(job.id).state == JobState.CLEANED and journal.get(job.id).trash_until is None
        journal.restored(job.id)
        assert journal.get(job.id).state == JobState.DONE
    finally:
        journal.close()


def test_journal_defer_does_not_count_the_attempt(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.sqlite3")
    try:
        job, _ = journal.submit("/runs/a", "x", {})
        for _ in range(3):
            assert journal.start(job.id).attempts == 1
            deferred = journal.defer(job.id, 5.0, "claimed by y")
            assert (deferred.state, deferred.attempts, deferred.next_attempt) == (JobState.PENDING, 0, 5.0)
            assert deferred.error == "claimed by y"
    finally:
        journal.close()


# ----------------------------------------------------------------------------------------
# Claims between actors
# ----------------------------------------------------------------------------------------


def count_writes(actor: CollectorArchiver) -> list[str]:
    """Record every run the actor really decodes and writes."""
    calls: list[str] = []
    runner = actor.service.runner
    original = runner._write_outputs

    def wrapped(job: Job, *args: Any) -> tuple[dict[str, int], int]:
        calls.append(job.path)
        return original(job, *args)

    runner._write_outputs = wrapped  # type: ignore[method-assign]
    return calls


def claim_actor(env: Env, name: str, **overrides: Any) -> CollectorArchiver:
    kwargs = dict(state_dir=str(env.tmp / f"state-{name}"), claim_runs=True, claim_heartbeat=0.05)
    return env.actor(**{**kwargs, **overrides})


@pytest.mark.parametrize("attempt", range(3))
def test_two_actors_collect_a_run_once(env: Env, attempt: int) -> None:
    first, second = claim_actor(env, "a"), claim_actor(env, "b")
    assert first.service.runner.owner != second.service.runner.owner
    writes = {first.service.runner.owner: count_writes(first), second.service.runner.owner: count_writes(second)}
    runs = [env.run(f"run-{i}") for i in range(3)]
    barrier = threading.Barrier(2)

    def announce(actor: CollectorArchiver) -> None:
        barrier.wait()
        for run in runs:
            actor.feed("logger-x", {"path": str(run)})

    threads = [threading.Thread(target=announce, args=(a,)) for a in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)

    for run in runs:
        jobs = [wait_job(actor, run, JobState.DONE, JobState.FAILED) for actor in (first, second)]
        assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE], [j.error for j in jobs]
        assert jobs[0].outputs == jobs[1].outputs and len(jobs[0].outputs) == len(MEASURES)
        assert all(j.attempts == 1 for j in jobs)
        marker = json.loads((run / COLLECTED_FILE).read_text())
        assert marker["outputs"] == jobs[0].outputs
        writers = [owner for owner, calls in writes.items() if str(run) in calls]
        assert writers == [marker["owner"]]  # exactly one actor decoded and wrote it
        assert not (run / CLAIM_FILE).exists()
        for target in jobs[0].outputs:
            assert read_provenance(target)["logger_path"] == str(run)
    assert not any(env.out.rglob(".*.tmp"))


def test_an_actor_defers_a_run_claimed_by_a_live_foreign_actor(env: Env) -> None:
    actor = claim_actor(env, "a", max_retries=1)
    writes = count_writes(actor)
    run = env.run("run-1")
    claim = run / CLAIM_FILE
    claim.write_text(json.dumps({"owner": "elsewhere:/var/lib/hc", "host": "elsewhere", "pid": 4242}))

    actor.feed("logger-x", {"path": str(run)})

    def deferred() -> Job | None:
        job = actor.service.journal.by_path(str(run))
        return job if job.state == JobState.PENDING and job.error and "claimed by" in job.error else None

    job = wait_for(deferred, "the job to be deferred")
    assert "elsewhere:/var/lib/hc" in job.error and "4242" in job.error
    assert job.attempts == 0 and job.next_attempt is not None
    # it keeps deferring (the foreign heartbeat is kept fresh) without using up its retries
    for _ in range(3):
        os.utime(claim)
        seen = job.updated
        job = wait_for(
            lambda seen=seen: (
                (j := actor.service.journal.by_path(str(run))).state == JobState.PENDING and j.updated > seen and j
            ),
            "another deferral",
        )
        assert job.attempts == 0 and "claimed by" in job.error
    assert writes == [] and actor.failed() == []
    assert json.loads(claim.read_text())["owner"] == "elsewhere:/var/lib/hc"  # left alone

    claim.unlink()  # the foreign actor released it without collecting (it failed)
    done = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE and done.attempts == 1 and done.error is None
    assert writes == [str(run)]
    assert json.loads((run / COLLECTED_FILE).read_text())["owner"] == actor.service.runner.owner


def test_an_actor_takes_over_the_run_from_a_foreign_actor_that_collected_it(env: Env) -> None:
    actor = claim_actor(env, "a")
    writes = count_writes(actor)
    run = env.run("run-1")
    (run / CLAIM_FILE).write_text(json.dumps({"owner": "elsewhere:/x", "host": "elsewhere", "pid": 4242}))
    actor.feed("logger-x", {"path": str(run)})
    wait_for(lambda: "claimed by" in (actor.service.journal.by_path(str(run)).error or ""), "the job to be deferred")
    # the foreign actor finishes: it writes the marker, then drops its claim
    outputs = {str(env.out / run.name / f"{m}.arrow"): 1 for m in MEASURES}
    marker = {
        "owner": "elsewhere:/x",
        "host": "elsewhere",
        "pid": 4242,
        "collected_at": time.time(),
        "outputs": outputs,
    }
    (run / COLLECTED_FILE).write_text(json.dumps(marker))
    (run / CLAIM_FILE).unlink()
    done = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE and done.outputs == outputs and done.attempts == 1
    assert writes == []  # not collected a second time


def test_a_stale_foreign_claim_is_taken_over(env: Env) -> None:
    actor = claim_actor(env, "a", claim_timeout=5)
    run = env.run("run-1")
    claim = run / CLAIM_FILE
    claim.write_text(json.dumps({"owner": "dead:/x", "host": "dead", "pid": 4242}))
    old = time.time() - 60
    os.utime(claim, (old, old))
    job = collected(actor, run)
    assert job.attempts == 1
    assert json.loads((run / COLLECTED_FILE).read_text())["owner"] == actor.service.runner.owner
    assert not claim.exists()


def test_a_restarted_actor_takes_its_own_claim_over(env: Env) -> None:
    actor = claim_actor(env, "a", claim_timeout=3600)
    run = env.run("run-1")
    # what the actor's previous life (killed while collecting) left behind, fresh
    assert actor.service.runner.owner == f"{socket.gethostname()}:{os.path.realpath(env.tmp / 'state-a')}"
    (run / CLAIM_FILE).write_text(json.dumps({"owner": actor.service.runner.owner, "host": "h", "pid": 999999}))
    job = collected(actor, run)
    assert job.attempts == 1
    assert json.loads((run / COLLECTED_FILE).read_text())["owner"] == actor.service.runner.owner


# ----------------------------------------------------------------------------------------
# Verification before delete, and the cleanup of every run in the background
# ----------------------------------------------------------------------------------------


def test_verify_remotely_and_cleanup_refused_for_a_changed_output(env: Env) -> None:
    actor = env.actor(cleanup_grace=3600)
    run = env.run("run-1")
    job = collected(actor, run)
    wait_for(lambda: actor.service.cleaner.ledger.inventory(str(run)), "the run's inventory")
    answer = actor.verify(str(run))
    assert answer["ok"] is True and {o["path"] for o in answer["outputs"]} == set(job.outputs)
    json.dumps(answer)

    victim = Path(sorted(job.outputs)[0])
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0x80
    victim.write_bytes(bytes(data))
    answer = actor.verify(str(run))
    assert answer["ok"] is False
    bad = [o for o in answer["outputs"] if not o["ok"]]
    assert [o["path"] for o in bad] == [str(victim)] and "SHA-256" in bad[0]["problems"][0]
    segments = contents(segment_files(run))
    assert actor.cleanup(str(run)) is False
    assert contents(segment_files(run)) == segments
    assert actor.service.journal.get(job.id).state == JobState.DONE


def test_remote_cleanup_of_every_run_answers_with_a_count_and_finishes_in_the_background(env: Env) -> None:
    actor = env.actor(cleanup_grace=3600)
    runs = [env.run(f"run-{i}") for i in range(3)]
    for run in runs:
        collected(actor, run)
        wait_for(lambda run=run: actor.service.cleaner.ledger.inventory(str(run)), "the run's inventory")
    cleaner = actor.service.cleaner
    release = threading.Event()
    original = cleaner._clean_one

    def held(*args: Any) -> bool:
        release.wait(TIMEOUT)  # the sweep takes "long": until the test lets it go on
        return original(*args)

    cleaner._clean_one = held  # type: ignore[method-assign]
    try:
        answer = actor.cleanup()
        assert answer == 3 and answer is not True  # a count, not an answer: it goes on in the background
        progress = actor.status()["cleanup"]
        assert progress["running"] is True and progress["total"] == 3 and progress["cleaned"] == 0
        assert actor.cleanup() == 3  # a second call joins the sweep running, it starts no other
    finally:
        release.set()
    wait_for(lambda: not actor.status()["cleanup"]["running"], "the background cleanup to finish")
    progress = actor.status()["cleanup"]
    assert (progress["seen"], progress["cleaned"], progress["refused"], progress["error"]) == (3, 3, 0, None)
    assert all(segment_files(run) == [] for run in runs)
    assert actor.status()["counts"][JobState.CLEANED] == 3
    assert actor.cleanup() is True  # nothing left: answered at once
