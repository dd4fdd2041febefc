"""The ``CollectorArchiver`` actor in process, on real Zenoh.

Every actor gets its own realm, so tests never see each other's events. Most tests drive the
actor by calling ``feed`` (exactly what the Zenoh event callback calls); some fire a real
``@event`` of a ``LocalHERO`` in the same realm. Waiting is done by polling the journal with
a deadline, never with fixed sleeps.

The Zenoh sessions are real but not networked: each test's actors and HEROs share a session
manager with multicast scouting off. With the default configuration every session in the
process would mesh with every Zenoh peer on the machine (other test runs, BOSS instances),
which made runs slow and fragile when something else was running; cross-process delivery is
the end-to-end tests' job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from heros.zenoh import ZenohSessionManager

from herocollector import Collector
from herocollector.actor.archiver import CollectorArchiver
from herocollector.actor.demo import MEASURES
from herocollector.collector import output_schema as label_schema
from herocollector.errors import CollectorError, JournalError
from herocollector.events import parse_event
from herocollector.journal.sqlite import JobState, SqliteJournal
from herocollector.output.files import read_provenance, temporary_name
from herocollector.output.manifest import Manifest
from herocollector.run.catalogue import Stream
from herocollector.testing.actors import (
    COLUMNS,
    ENTITIES,
    RECORDS,
    Env,
    collected,
    corrupt,
    expected_by_measure,
    read_arrow,
    segments,
    snapshot,
    wait_for,
    wait_idle,
    wait_job,
)
from herocollector.testing.runs import MemoryWriter


@pytest.fixture
def actor(env: Env) -> CollectorArchiver:
    return env.actor()


def outputs_of(env: Env, run: Path) -> dict[str, Path]:
    return {m: env.out / run.name / f"{m}.arrow" for m in MEASURES}


# ----------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, path, metadata",
    [
        ("/r/a", "/r/a", {}),
        ({"path": "/r/a", "x": 1}, "/r/a", {"path": "/r/a", "x": 1}),
        (({"x": 1}, {"path": "/r/a", "y": 2}), "/r/a", {"path": "/r/a", "y": 2}),
        ([{"x": 1}, {"path": "/r/a"}], "/r/a", {"path": "/r/a"}),
        (({"path": "/r/a", "x": 1}, {"y": 2}), "/r/a", {"path": "/r/a", "x": 1, "y": 2}),
        (({"path": "/r/payload", "x": 1}, {"path": "/r/meta"}), "/r/meta", {"path": "/r/meta"}),
        (("/r/a", {"y": 2}), "/r/a", {"y": 2}),
        (("/r/a", None), "/r/a", {}),
    ],
    ids=["bare", "dict", "pair-meta", "list-pair", "pair-payload", "meta-wins", "pair-str", "pair-str-none"],
)
def test_parse_event(data: Any, path: str, metadata: dict) -> None:
    assert parse_event(data, "path") == (path, metadata)


@pytest.mark.parametrize(
    "data", [42, None, b"/r/a", {"nopath": 1}, {"path": 5}, {"path": ""}, "", [1, 2, 3], ({"x": 1}, {"y": 2}), (1, 2)]
)
def test_parse_event_refuses_events_without_path(data: Any) -> None:
    with pytest.raises(ValueError):
        parse_event(data, "path")


def test_parse_event_custom_path_key() -> None:
    assert parse_event({"dir": "/r/a"}, "dir")[0] == "/r/a"
    with pytest.raises(ValueError, match="'dir'"):
        parse_event({"path": "/r/a"}, "dir")


def _streams(*labels: dict) -> list[Stream]:
    return [Stream(i, 1.0, 1.0, label) for i, label in enumerate(labels)]


def test_label_schema_types_and_mixed_types() -> None:
    schema = label_schema(_streams({"a": "x", "n": 1}, {"a": "y", "n": None}), ["a", "n", "missing"])
    assert schema.names[-3:] == ["a", "n", "missing"]
    assert schema.field("a").type == pa.string() and schema.field("n").type == pa.int64()
    with pytest.raises(CollectorError, match="mixed types"):
        label_schema(_streams({"a": "x"}, {"a": 1}), ["a"])


def test_label_schema_pinned_types_win() -> None:
    schema = label_schema(_streams({"a": "x"}, {"a": 1}), ["a"], {"a": pa.string()})
    assert schema.field("a").type == pa.string()


# ----------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------


def test_construction_needs_output_root(env: Env) -> None:
    with pytest.raises(ValueError, match="output_root"):
        env.actor(output_root=None)


def test_output_root_from_default_metadata(env: Env) -> None:
    actor = env.actor(output_root=None, default_metadata={"output_root": str(env.out)})
    assert actor.service.config.output_root == env.out
    run = env.run("run-1")
    collected(actor, run)
    assert all(p.is_file() for p in outputs_of(env, run).values())


@pytest.mark.parametrize("overrides", [{"format": "feather"}, {"compression": "gzip"}])
def test_construction_refuses_unknown_format_or_compression(env: Env, overrides: dict) -> None:
    with pytest.raises(ValueError):
        env.actor(**overrides)


# ----------------------------------------------------------------------------------------
# A good run
# ----------------------------------------------------------------------------------------


def test_good_run_is_collected(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-0001")
    actor.feed("logger-x", {"path": str(run)})
    job = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    assert job.attempts == 1 and job.error is None
    targets = outputs_of(env, run)
    assert job.outputs == {str(targets[m]): RECORDS // len(MEASURES) for m in MEASURES}
    assert job.rows == RECORDS
    manifests = env.out.with_name(env.out.name + ".manifests")  # the default manifest_root, beside output_root
    [manifest_file] = (manifests / run.name).glob("_manifest-run-0001-*.json")  # written last
    assert sorted(p.name for p in (env.out / run.name).iterdir()) == sorted(f"{m}.arrow" for m in MEASURES)
    assert [p.name for p in (manifests / run.name).iterdir()] == [manifest_file.name]
    manifest = Manifest.from_json(manifest_file.read_bytes())
    assert (manifest.run, manifest.job, manifest.token) == (str(run), job.id, 1)
    assert {e.path: e.rows for e in manifest.outputs} == job.outputs
    for entry in manifest.outputs:
        assert entry.bytes == Path(entry.path).stat().st_size
        assert entry.sha256 == hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()

    expected = expected_by_measure(run)
    for measure, target in targets.items():
        table = read_arrow(target)
        assert table.num_rows == job.outputs[str(target)] == expected[measure].num_rows
        assert table.replace_schema_metadata(None).equals(expected[measure])
        assert set(table.column("measure").to_pylist()) == {measure}
        assert set(table.column("entity").to_pylist()) == {f"entity-{e}" for e in range(ENTITIES)}

        provenance = read_provenance(target)
        assert provenance["logger_path"] == str(run)
        assert provenance["source"] == "logger-x"
        assert provenance["job"] == str(job.id)
        datetime.fromisoformat(provenance["collected_at"])
        streams = json.loads(provenance["streams"])
        assert sorted((s["entity"], s["measure"]) for s in streams) == [
            (f"entity-{e}", measure) for e in range(ENTITIES)
        ]
        assert all("_logger_path" not in s and "stream_id" in s for s in streams)

    status = actor.status()
    assert status["counts"] == {"pending": 0, "waiting": 0, "running": 0, "done": 1, "failed": 0, "cleaned": 0}
    assert status["queued"] == 0
    assert status["running"] == [] and status["waiting"] == 0
    assert status["journal"] == str(env.state / "journal.sqlite3")
    assert status["output_root"] == str(env.out)
    assert [j["path"] for j in status["recent"]] == [str(run)]
    json.dumps(status)  # remote methods return plain data
    assert actor.failed() == []
    assert list(run.glob("*.seg.zst"))  # collecting does not clean


def test_repeated_event_for_a_done_run_is_not_collected_twice(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    first = collected(actor, run)
    before = {p: p.stat().st_mtime_ns for p in map(Path, first.outputs)}
    listing = snapshot(env.out)

    actor.feed("logger-x", {"path": str(run)})
    actor.feed("logger-y", str(run))
    assert actor.is_queue_drained()
    assert actor.collect(str(run))["state"] == JobState.DONE
    assert actor.is_queue_drained()

    assert len(actor.service.journal.jobs()) == 1
    again = actor.service.journal.by_path(str(run))
    assert again.state == JobState.DONE and again.attempts == 1 and again.source == "logger-x"
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert snapshot(env.out) == listing


def test_collect_remote_method(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    job = actor.collect(str(run))
    assert job["path"] == str(run) and job["source"] == "remote"
    assert job["state"] == JobState.PENDING
    done = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE and done.rows == RECORDS


def test_streams_with_equal_paths_share_one_file(env: Env) -> None:
    actor = env.actor(save_template="{{ logger_name }}.arrow")
    run = env.run("run-1")
    job = collected(actor, run)
    target = env.out / "run-1.arrow"
    assert job.outputs == {str(target): RECORDS}
    writer = MemoryWriter()
    assert Collector([run]).collect(writer, columns=COLUMNS)
    assert read_arrow(target).replace_schema_metadata(None).equals(writer.table())


def test_rule_selecting_nothing_is_done_without_outputs(env: Env) -> None:
    actor = env.actor(rule={"match": {"key": "model", "op": "eq", "value": "no-such-model"}})
    run = env.run("run-1")
    job = collected(actor, run)
    assert job.outputs == {} and job.rows == 0
    assert not env.out.exists() or not any(env.out.rglob("*.arrow"))


def test_rule_and_stream_format_with_compression(env: Env) -> None:
    actor = env.actor(
        rule={"match": {"key": "measure", "op": "eq", "value": "stock"}}, format="stream", compression="zstd"
    )
    run = env.run("run-1")
    job = collected(actor, run)
    target = env.out / run.name / "stock.arrow"
    assert list(job.outputs) == [str(target)]
    with pa.OSFile(str(target)) as fh:
        table = pa.ipc.open_stream(fh).read_all()
    assert table.replace_schema_metadata(None).equals(expected_by_measure(run)["stock"])
    assert read_provenance(target)["logger_path"] == str(run)
    with pytest.raises(pa.ArrowInvalid):
        pa.ipc.open_file(str(target))


def test_runs_written_by_the_real_data_logger(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-dl", backend="data_logger")
    job = collected(actor, run)
    expected = expected_by_measure(run)
    for measure, target in outputs_of(env, run).items():
        assert read_arrow(target).replace_schema_metadata(None).equals(expected[measure])
    assert job.rows == RECORDS


# ----------------------------------------------------------------------------------------
# Real Zenoh events
# ----------------------------------------------------------------------------------------


def test_event_from_a_local_hero_is_collected(env: Env, actor: CollectorArchiver) -> None:
    seen: list[tuple[str, Any]] = []
    actor.register_callback(lambda name, data: seen.append((name, data)))  # runs after feed
    hero = env.announcer(actor)
    run = env.run("run-zenoh")

    hero.finished({"path": str(run), "experiment": "via-zenoh"})
    job = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    assert job.source == "announcer"
    assert job.metadata == {"path": str(run), "experiment": "via-zenoh"}
    for target in outputs_of(env, run).values():
        assert read_provenance(target)["source"] == "announcer"
    mtimes = {p: Path(p).stat().st_mtime_ns for p in job.outputs}

    # the same run announced again (as a (payload, metadata) pair): journalled once only
    count = len(seen)
    hero.finished(({"note": "again"}, {"path": str(run)}))
    wait_for(lambda: len(seen) > count, "the repeated event to arrive")
    assert seen[-1] == ("announcer", [{"note": "again"}, {"path": str(run)}])  # CBOR turns tuples into lists
    assert len(actor.service.journal.jobs()) == 1
    assert actor.service.journal.by_path(str(run)).attempts == 1
    assert {p: Path(p).stat().st_mtime_ns for p in job.outputs} == mtimes

    # a malformed event over Zenoh fails only itself; the actor keeps going
    hero.finished(42)
    wait_for(lambda: any(j["path"] is None for j in actor.failed()), "the malformed event to be journalled")
    second = env.run("run-zenoh-2")
    hero.finished(str(second))
    assert wait_job(actor, second, JobState.DONE, JobState.FAILED).state == JobState.DONE


class _OneSession(ZenohSessionManager):
    """Hands out one Zenoh session for every realm, so realms are told apart by key only."""

    def request_session(self, obj: object, realm: str) -> Any:
        return super().request_session(obj, "shared")


def test_events_of_another_realm_are_not_seen(env: Env) -> None:
    shared = _OneSession({"scouting/multicast/enabled": False})
    try:
        mine = env.actor(session_manager=shared)
        other = env.actor(
            session_manager=shared, state_dir=str(env.tmp / "state-other"), output_root=str(env.tmp / "out-other")
        )
        assert mine._session is other._session and mine._realm != other._realm
        hero = env.announcer(other)
        run = env.run("run-1")
        hero.finished({"path": str(run)})
        assert wait_job(other, run, JobState.DONE, JobState.FAILED).state == JobState.DONE
        assert mine.service.journal.jobs() == []
    finally:
        env.close()
        shared.force_close()


def test_event_name_is_respected(env: Env) -> None:
    actor = env.actor(event_name="published")
    seen: list[Any] = []
    actor.register_callback(lambda name, data: seen.append(data))
    hero = env.announcer(actor)
    hero.finished({"path": str(env.run("run-1"))})
    actor.feed("logger-x", {"path": str(env.run("run-2"))})  # proves the actor itself works
    wait_job(actor, env.runs / "run-2", JobState.DONE)
    assert seen == [] and len(actor.service.journal.jobs()) == 1


# ----------------------------------------------------------------------------------------
# The event contract and template variables
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_event",
    [
        lambda p: {"path": p},
        lambda p: {"path": p, "extra": [1, 2]},
        lambda p: ({"payload": True}, {"path": p}),
        lambda p: [{"payload": True}, {"path": p}],
        lambda p: ({"path": p}, {"other": 1}),
        lambda p: (p, {"other": 1}),
        lambda p: p,
    ],
    ids=["dict", "dict-extra", "pair-meta", "list-pair-meta", "pair-payload", "pair-path", "bare-path"],
)
def test_event_contract_variants(env: Env, actor: CollectorArchiver, make_event: Callable[[str], Any]) -> None:
    run = env.run("run-1")
    job = collected(actor, run, make_event(str(run)))
    assert job.rows == RECORDS
    assert all(p.is_file() for p in outputs_of(env, run).values())


def test_custom_path_key(env: Env) -> None:
    actor = env.actor(path_key="logger_dir")
    run = env.run("run-1")
    actor.feed("logger-x", {"path": str(run)})  # the wrong key: malformed
    assert actor.service.journal.by_path(str(run)) is None
    assert "'logger_dir'" in actor.failed()[0]["error"]
    job = collected(actor, run, {"logger_dir": str(run)})
    assert job.rows == RECORDS


def test_template_context_precedence_and_variables(env: Env) -> None:
    template = (
        "{{ output_root }}/{{ x }}-{{ y }}-{{ z }}/{{ experiment }}/{{ source_name }}/{{ logger_name }}/"
        # "_tmp_…" is skipped by dataset readers: the template opts in with subpath
        "{{ logger_path | replace('/', '_') | subpath }}/{{ measure }}.arrow"
    )
    actor = env.actor(
        save_template=template,
        default_metadata={"x": "default", "y": "default", "z": "default", "experiment": "from-default"},
    )
    run = env.run("run-7", labels={"z": "label", "experiment": "from-label"})
    job = collected(actor, run, ({"payload": 1}, {"path": str(run), "y": "event", "z": "event"}), source="logger-q")
    base = env.out / "default-event-label" / "from-label" / "logger-q" / "run-7" / str(run).replace("/", "_")
    assert set(job.outputs) == {str(base / f"{m}.arrow") for m in MEASURES}
    assert all(Path(p).is_file() for p in job.outputs)


def test_event_metadata_overrides_default_metadata(env: Env) -> None:
    actor = env.actor(
        save_template="{{ output_root }}/{{ site }}/{{ logger_name }}.arrow", default_metadata={"site": "home"}
    )
    first, second = env.run("run-1"), env.run("run-2")
    assert set(collected(actor, first).outputs) == {str(env.out / "home" / "run-1.arrow")}
    assert set(collected(actor, second, {"path": str(second), "site": "away"}).outputs) == {
        str(env.out / "away" / "run-2.arrow")
    }


def test_event_field_cannot_move_output_root(env: Env, actor: CollectorArchiver) -> None:
    evil = env.tmp / "evil"
    run = env.run("run-1")
    actor.feed("logger-x", {"path": str(run), "output_root": str(evil)})
    job = wait_job(actor, run, JobState.FAILED)
    assert "LabelPathError" in job.error and str(evil) in job.error  # an event field is not trusted
    assert not evil.exists()


def test_label_value_cannot_escape_output_root(env: Env) -> None:
    actor = env.actor(save_template="{{ output_root }}/{{ experiment }}/{{ measure }}.arrow")
    run = env.run("run-1", labels={"experiment": "../../evil"})
    actor.feed("logger-x", {"path": str(run)})
    job = wait_job(actor, run, JobState.FAILED)
    assert "LabelPathError" in job.error and "../../evil" in job.error and job.attempts == 1
    assert not (env.tmp / "evil").exists() and not (env.tmp.parent / "evil").exists()
    assert not any(env.tmp.rglob("*.arrow")) and not any(env.tmp.rglob("*.tmp"))


# ----------------------------------------------------------------------------------------
# Faults: each fails only its own job
# ----------------------------------------------------------------------------------------


def _fault_missing(env: Env) -> tuple[Any, str | None, list[str]]:
    path = env.runs / "missing"
    return {"path": str(path)}, str(path), ["logger directory does not exist", str(path)]


def _fault_corrupt(env: Env) -> tuple[Any, str | None, list[str]]:
    run = env.run("corrupt")
    corrupt(run)
    return {"path": str(run)}, str(run), ["SegmentError", "00000.seg.zst", "byte offset 0"]


def _fault_outside(env: Env) -> tuple[Any, str | None, list[str]]:
    run = env.run("foreign", folder=env.outside)
    return {"path": str(run)}, str(run), ["outside allowed_roots"]


def _fault_dotdot(env: Env) -> tuple[Any, str | None, list[str]]:
    env.run("sneaky", folder=env.outside)
    path = f"{env.runs}/../outside/sneaky"
    # The job is journalled under the normalised path (one job per run, however spelled).
    return {"path": path}, os.path.normpath(path), ["outside allowed_roots"]


def _fault_symlink(env: Env) -> tuple[Any, str | None, list[str]]:
    run = env.run("linked", folder=env.outside)
    (env.runs / "link").symlink_to(run, target_is_directory=True)
    return {"path": str(env.runs / "link")}, str(env.runs / "link"), ["outside allowed_roots"]


def _fault_relative(env: Env) -> tuple[Any, str | None, list[str]]:
    return {"path": "runs/x"}, "runs/x", ["must be absolute"]


def _fault_not_logger(env: Env) -> tuple[Any, str | None, list[str]]:
    folder = env.runs / "not-a-logger"
    folder.mkdir()
    (folder / "_DONE").touch()
    return {"path": str(folder)}, str(folder), ["MetadataError", "no streams/ folder"]


def _fault_bad_json(env: Env) -> tuple[Any, str | None, list[str]]:
    run = env.run("bad-json")
    next((run / "streams").glob("*.json")).write_text("{not json", encoding="utf-8")
    return {"path": str(run)}, str(run), ["MetadataError", "invalid JSON"]


def _fault_nul(env: Env) -> tuple[Any, str | None, list[str]]:
    path = f"{env.runs}/bad\x00name"
    return {"path": path}, path, ["null"]


def _malformed(event: Any, *needles: str) -> Callable[[Env], tuple[Any, str | None, list[str]]]:
    return lambda env: (event, None, ["malformed event", *needles])


FAULTS = {
    "missing": _fault_missing,
    "corrupt-segment": _fault_corrupt,
    "outside-allowed-roots": _fault_outside,
    "dotdot-outside": _fault_dotdot,
    "symlink-outside": _fault_symlink,
    "relative-path": _fault_relative,
    "not-a-logger-dir": _fault_not_logger,
    "bad-stream-json": _fault_bad_json,
    "nul-in-path": _fault_nul,
    "malformed-int": _malformed(42, "int"),
    "malformed-no-path": _malformed({"nopath": 1}, "no logger path under 'path'"),
    "malformed-path-not-str": _malformed({"path": 5}, "no logger path"),
    "malformed-none": _malformed(None, "NoneType"),
    "malformed-list": _malformed([1, 2, 3], "list"),
    "malformed-empty-path": _malformed("", "no logger path"),
}


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_fault_fails_only_its_own_job(env: Env, actor: CollectorArchiver, fault: str) -> None:
    good_before = env.run("good-before")
    collected(actor, good_before)

    event, path, needles = FAULTS[fault](env)
    actor.feed("logger-bad", event)
    if path is None:
        failed = wait_for(lambda: [j for j in actor.failed() if j["path"] is None], "the malformed job")
        assert len(failed) == 1
        job = failed[0]
        assert job["source"] == "logger-bad"
        assert job["metadata"]["event"] == repr(event)
    else:
        job = wait_job(actor, path, JobState.FAILED).to_dict()
        # max_retries=1: the first attempt and one retry, except for a run the configuration
        # refuses (a relative path, outside allowed_roots), which no retry can fix.
        refused = "allowed_roots" in job["error"] or "must be absolute" in job["error"]
        assert job["attempts"] == (1 if refused else 2)
        assert [j["id"] for j in actor.failed()] == [job["id"]]
        assert job["outputs"] == {}
    for needle in needles:
        assert needle in job["error"], (needle, job["error"])
    assert job["state"] == JobState.FAILED

    good_after = env.run("good-after")
    collected(actor, good_after)
    assert all(thread.is_alive() for thread in actor.service.scheduler._threads)
    counts = actor.status()["counts"]
    assert (
        counts[JobState.DONE] == 2
        and counts[JobState.FAILED] == 1
        and counts[JobState.PENDING] == counts[JobState.RUNNING] == 0
    )
    assert not any(env.out.rglob(".*.tmp"))
    assert not any(env.outside.rglob("*.arrow"))


def test_template_error_fails_only_its_job(env: Env) -> None:
    actor = env.actor(save_template="{{ output_root }}/{{ campaign }}/{{ measure }}.arrow")
    bad = env.run("no-campaign")
    actor.feed("logger-x", {"path": str(bad)})
    job = wait_job(actor, bad, JobState.FAILED)
    assert "OutputError" in job.error and "campaign" in job.error and "undefined" in job.error
    assert [j["path"] for j in actor.failed()] == [str(bad)]
    assert not env.out.exists() or not any(env.out.rglob("*"))

    good = env.run("with-campaign")
    job = collected(actor, good, {"path": str(good), "campaign": "c1"})
    assert set(job.outputs) == {str(env.out / "c1" / f"{m}.arrow") for m in MEASURES}

    # feeding the failed run again with the missing variable requeues it
    job = collected(actor, bad, {"path": str(bad), "campaign": "c2"})
    assert job.attempts == 1


def test_done_timeout_fails_the_job(env: Env) -> None:
    actor = env.actor(timeout=50, backoff=5)
    run = env.run("unfinished")
    (run / "_DONE").unlink()
    actor.feed("logger-x", {"path": str(run)})
    job = wait_job(actor, run, JobState.FAILED)
    assert "DoneTimeout" in job.error and "no _DONE within 50 ms" in job.error
    (run / "_DONE").touch()
    assert actor.retry(str(run)) == 1
    assert wait_job(actor, run, JobState.DONE, JobState.FAILED).state == JobState.DONE


def test_retry_path_after_fixing_the_run(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    other = env.run("run-2")
    corrupt(run)
    corrupt(other)
    actor.feed("logger-x", {"path": str(run)})
    actor.feed("logger-x", {"path": str(other)})
    failed = wait_job(actor, run, JobState.FAILED)
    wait_job(actor, other, JobState.FAILED)
    assert failed.attempts == 2
    assert sorted(j["path"] for j in actor.failed()) == [str(run), str(other)]

    shutil.rmtree(run)
    env.run("run-1")  # rewritten, intact
    assert actor.retry(str(run)) == 1
    job = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE and job.attempts == 1 and job.error is None and job.rows == RECORDS
    expected = expected_by_measure(run)
    for measure, target in outputs_of(env, run).items():
        assert read_arrow(target).replace_schema_metadata(None).equals(expected[measure])
    assert [j["path"] for j in actor.failed()] == [str(other)]
    assert actor.retry(str(run)) == 0  # done: nothing to retry

    shutil.rmtree(other)
    env.run("run-2")
    assert actor.retry() == 1  # every failed job with a path
    assert wait_job(actor, other, JobState.DONE, JobState.FAILED).state == JobState.DONE
    assert actor.failed() == []


def test_retry_does_not_requeue_malformed_events(env: Env, actor: CollectorArchiver) -> None:
    actor.feed("logger-x", 42)
    assert actor.retry() == 0
    assert len(actor.failed()) == 1


def test_transient_failure_is_retried_automatically(env: Env) -> None:
    actor = env.actor(max_retries=5, retry_delay=0.2)
    run = env.runs / "late"
    actor.feed("logger-x", {"path": str(run)})  # does not exist yet
    wait_for(
        lambda: (j := actor.service.journal.by_path(str(run))) and j.attempts >= 1 and j.state == JobState.PENDING,
        "first failure",
    )
    env.run("late")
    job = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE and job.attempts >= 2 and job.error is None


# ----------------------------------------------------------------------------------------
# Output collisions
# ----------------------------------------------------------------------------------------


def test_output_collision_between_two_runs(env: Env) -> None:
    actor = env.actor(save_template="{{ output_root }}/{{ measure }}.arrow")
    first, second = env.run("run-a"), env.run("run-b")
    job = collected(actor, first)
    assert set(job.outputs) == {str(env.out / f"{m}.arrow") for m in MEASURES}
    listing = snapshot(env.out)

    actor.feed("logger-x", {"path": str(second)})
    failed = wait_job(actor, second, JobState.FAILED)
    assert "collision" in failed.error
    assert str(first) in failed.error and str(second) in failed.error
    assert snapshot(env.out) == listing  # the first run's files are untouched
    for target in job.outputs:
        assert read_provenance(target)["logger_path"] == str(first)
    assert actor.service.journal.by_path(str(first)).state == JobState.DONE


def test_output_collision_with_a_foreign_file(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    foreign = env.out / run.name / "stock.arrow"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"somebody else's file")
    actor.feed("logger-x", {"path": str(run)})
    job = wait_job(actor, run, JobState.FAILED)
    assert "collision" in job.error and "not written by herocollector" in job.error and str(run) in job.error
    assert foreign.read_bytes() == b"somebody else's file"
    assert not any(env.out.rglob(".*.tmp"))


def test_failed_job_does_not_keep_outputs_reserved(env: Env) -> None:
    actor = env.actor(save_template="{{ output_root }}/{{ measure }}.arrow")
    broken, good = env.run("broken"), env.run("good")
    corrupt(broken)
    actor.feed("logger-x", {"path": str(broken)})
    wait_job(actor, broken, JobState.FAILED)
    assert not any(env.out.rglob("*.arrow"))
    # nothing was written, so another run may use the same paths
    job = collected(actor, good)
    assert set(job.outputs) == {str(env.out / f"{m}.arrow") for m in MEASURES}
    # and the broken run, retried, now collides with the good one instead of overwriting it
    listing = snapshot(env.out)
    shutil.rmtree(broken)
    env.run("broken")
    assert actor.retry(str(broken)) == 1
    failed = wait_job(actor, broken, JobState.FAILED)
    assert "collision" in failed.error and str(good) in failed.error
    assert snapshot(env.out) == listing


# ----------------------------------------------------------------------------------------
# Cleanup
# ----------------------------------------------------------------------------------------


def test_cleanup_of_a_collected_run(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1", rotate_bytes=1000, backend="data_logger")
    assert len(segments(run)) > 1
    job = collected(actor, run)
    outputs = snapshot(env.out)
    metadata_files = sorted(p.name for p in (run / "streams").iterdir())

    assert actor.cleanup(str(run)) is True
    assert segments(run) == []
    assert sorted(p.name for p in (run / "streams").iterdir()) == metadata_files
    assert (run / "_DONE").exists()
    assert actor.service.journal.get(job.id).state == JobState.CLEANED
    assert actor.status()["counts"][JobState.CLEANED] == 1
    assert snapshot(env.out) == outputs  # outputs untouched

    # a cleaned run is not collected again
    actor.feed("logger-x", {"path": str(run)})
    assert actor.service.journal.get(job.id).state == JobState.CLEANED and actor.is_queue_drained()


def test_cleanup_all_collected_runs_with_keep_meta_false(env: Env, actor: CollectorArchiver) -> None:
    done = [env.run(f"run-{i}") for i in range(2)]
    for run in done:
        collected(actor, run)
    uncollected = env.run("not-announced")
    before = snapshot(uncollected)

    assert actor.cleanup(keep_meta=False) is True
    for run in done:
        assert segments(run) == [] and not (run / "streams").exists() and (run / "_DONE").exists()
        assert actor.service.journal.by_path(str(run)).state == JobState.CLEANED
    assert snapshot(uncollected) == before  # not collected: not part of "every collected run"
    assert actor.cleanup() is True  # nothing left to do


def test_cleanup_refuses_a_run_not_collected_unless_forced(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    before = snapshot(run)
    assert actor.cleanup(str(run)) is False
    assert snapshot(run) == before

    corrupt(run)
    actor.feed("logger-x", {"path": str(run)})
    wait_job(actor, run, JobState.FAILED)
    before = snapshot(run)
    assert actor.cleanup(str(run)) is False  # failed is not collected either
    assert snapshot(run) == before

    assert actor.cleanup(str(run), force=True) is True
    assert segments(run) == [] and (run / "streams").is_dir()
    assert actor.service.journal.by_path(str(run)).state == JobState.FAILED  # still never collected


def test_cleanup_force_of_a_run_without_job(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    assert actor.cleanup(str(run), force=True) is True
    assert segments(run) == []
    assert actor.service.journal.jobs() == []


@pytest.mark.parametrize("force", [False, True])
def test_cleanup_refuses_dotdot_leading_outside(env: Env, actor: CollectorArchiver, force: bool) -> None:
    victim = env.run("victim", folder=env.outside)
    before = snapshot(env.outside)
    sneaky = f"{env.runs}/../outside/victim"
    assert os.path.realpath(sneaky) == str(victim)
    assert actor.cleanup(sneaky, force=force) is False
    assert actor.cleanup(sneaky, keep_meta=False, force=force) is False
    assert snapshot(env.outside) == before


@pytest.mark.parametrize("force", [False, True])
def test_cleanup_refuses_symlink_leading_outside(env: Env, actor: CollectorArchiver, force: bool) -> None:
    victim = env.run("victim", folder=env.outside)
    link = env.runs / "link"
    link.symlink_to(victim, target_is_directory=True)
    before = snapshot(env.outside)
    assert actor.cleanup(str(link), force=force) is False
    assert actor.cleanup(str(link), keep_meta=False, force=force) is False
    assert snapshot(env.outside) == before
    assert link.is_symlink()


def test_cleanup_refuses_a_collected_run_reached_through_a_symlink_outside(env: Env) -> None:
    # An actor that may read from both folders collects the run; a second actor, allowed
    # only "runs", shares its journal and must still refuse to clean it through a symlink.
    reader = env.actor(allowed_roots=[str(env.runs), str(env.outside)])
    victim = env.run("victim", folder=env.outside)
    link = env.runs / "link"
    link.symlink_to(victim, target_is_directory=True)
    collected(reader, link, {"path": str(link)})
    env.stop(reader)
    before = snapshot(env.outside)
    cleaner = env.actor(allowed_roots=[str(env.runs)])
    # the job is the run's, under its resolved path (one job however the run is spelled)
    assert cleaner.service.journal.by_path(str(victim)).state == JobState.DONE
    assert cleaner.cleanup(str(link)) is False
    assert cleaner.cleanup() is False  # "every collected run" includes it: refused too
    assert snapshot(env.outside) == before
    assert cleaner.service.journal.by_path(str(victim)).state == JobState.DONE


@pytest.mark.parametrize("force", [False, True])
def test_cleanup_refuses_a_path_outside_allowed_roots(env: Env, actor: CollectorArchiver, force: bool) -> None:
    victim = env.run("victim", folder=env.outside)
    before = snapshot(env.outside)
    assert actor.cleanup(str(victim), force=force) is False
    assert actor.cleanup(str(victim), keep_meta=False, force=force) is False
    assert snapshot(env.outside) == before


def test_cleanup_refuses_relative_paths(env: Env, actor: CollectorArchiver, monkeypatch: pytest.MonkeyPatch) -> None:
    run = env.run("run-1")
    monkeypatch.chdir(env.runs)
    before = snapshot(run)
    assert actor.cleanup("run-1", force=True) is False
    assert snapshot(run) == before


@pytest.mark.parametrize("force", [False, True])
def test_cleanup_refuses_a_directory_without_streams(env: Env, actor: CollectorArchiver, force: bool) -> None:
    folder = env.runs / "not-a-logger"
    folder.mkdir()
    (folder / "00000.seg.zst").write_bytes(b"looks like a segment")
    (folder / "_DONE").touch()
    before = snapshot(folder)
    assert actor.cleanup(str(folder), force=force) is False
    assert actor.cleanup(str(folder), keep_meta=False, force=force) is False
    assert snapshot(folder) == before
    assert actor.cleanup(str(env.runs / "missing"), force=force) is False


def test_cleanup_keep_meta_false_with_streams_symlinked_outside(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    collected(actor, run)
    # move streams/ outside and leave a symlink to it
    foreign = env.outside / "streams"
    shutil.move(str(run / "streams"), foreign)
    (run / "streams").symlink_to(foreign, target_is_directory=True)
    outside_before = snapshot(env.outside)
    run_before = snapshot(run)

    assert actor.cleanup(str(run), keep_meta=False) is False
    assert snapshot(env.outside) == outside_before  # the outside folder survives
    assert snapshot(run) == run_before  # and nothing was deleted
    assert actor.service.journal.by_path(str(run)).state == JobState.DONE


def test_cleanup_does_not_follow_symlinked_segments(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    collected(actor, run)
    precious = env.outside / "precious.seg.zst"
    precious.write_bytes(b"not yours")
    (run / "99999.seg.zst").symlink_to(precious)
    assert actor.cleanup(str(run)) is True
    assert precious.read_bytes() == b"not yours"
    assert segments(run) == []


def test_no_allowed_roots_means_no_cleanup(env: Env) -> None:
    actor = env.actor(allowed_roots=None)
    run = env.run("run-1")
    collected(actor, run)  # reading is allowed anywhere without allowed_roots
    elsewhere = env.run("elsewhere", folder=env.outside)
    collected(actor, elsewhere)
    before = snapshot(env.tmp / "runs"), snapshot(env.outside)
    assert actor.cleanup(str(run)) is False
    assert actor.cleanup(str(run), force=True, keep_meta=False) is False
    assert actor.cleanup() is False
    assert actor.cleanup(keep_meta=False, force=True) is False
    assert (snapshot(env.tmp / "runs"), snapshot(env.outside)) == before
    assert actor.service.journal.counts()[JobState.DONE] == 2


def test_cleanup_of_a_run_without_done_times_out(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    (run / "_DONE").unlink()
    before = snapshot(run)
    assert actor.cleanup(str(run), force=True, backoff=5, timeout=30) is False
    assert snapshot(run) == before


# ----------------------------------------------------------------------------------------
# Restart
# ----------------------------------------------------------------------------------------


def test_restart_resumes_a_job_that_was_running(env: Env) -> None:
    run = env.run("run-1")
    target_dir = env.out / run.name
    target_dir.mkdir(parents=True)
    # what a crash mid-write leaves behind: temporary files of a dead process, never a final name
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    leftovers = []
    for name in ("x.arrow", "stock.arrow"):
        parts = temporary_name(target_dir / name).name.split(".")
        parts[3] = str(dead_pid.pid)
        leftovers.append(target_dir / ".".join(parts))
        leftovers[-1].write_bytes(b"half-written garbage")
    journal = SqliteJournal(env.state / "journal.sqlite3")
    job, queued = journal.submit(str(run), "logger-x", {"path": str(run)})
    assert queued and journal.start(job.id).state == JobState.RUNNING
    journal.close()

    actor = env.actor()
    done = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE, done.error
    assert done.id == job.id and done.attempts == 2
    targets = outputs_of(env, run)
    assert set(done.outputs) == {str(p) for p in targets.values()}
    assert not any(Path(p).name.startswith(".") for p in done.outputs)
    assert not (target_dir / "x.arrow").exists()
    assert not leftovers[1].exists()  # the dead writer's leftover of a target it writes is removed
    expected = expected_by_measure(run)
    for measure, target in targets.items():
        with pa.ipc.open_file(str(target)) as reader:  # a complete Arrow IPC file
            table = reader.read_all()
        assert table.replace_schema_metadata(None).equals(expected[measure])


def test_restart_after_commit_before_finish_replaces_its_own_outputs(env: Env) -> None:
    first = env.actor()
    run = env.run("run-1")
    job = collected(first, run)
    env.stop(first)
    # the crash window: outputs committed, journal not yet updated
    with sqlite3.connect(env.state / "journal.sqlite3") as db:
        db.execute("UPDATE jobs SET state = 'running', rows = NULL WHERE id = ?", (job.id,))
    db.close()

    second = env.actor()
    again = wait_job(second, run, JobState.DONE, JobState.FAILED)
    assert again.state == JobState.DONE, again.error
    assert again.id == job.id and again.outputs == job.outputs and again.rows == RECORDS
    for target in job.outputs:
        assert read_provenance(target)["logger_path"] == str(run)
    assert not any(env.out.rglob(".*.tmp"))


def test_restart_keeps_done_and_failed_jobs(env: Env) -> None:
    first = env.actor()
    good, bad = env.run("good"), env.run("bad")
    corrupt(bad)
    collected(first, good)
    first.feed("logger-x", {"path": str(bad)})
    wait_job(first, bad, JobState.FAILED)
    env.stop(first)

    second = env.actor()
    assert second.service.journal.by_path(str(good)).state == JobState.DONE
    assert [j["path"] for j in second.failed()] == [str(bad)]
    assert second.is_queue_drained()
    second.feed("logger-x", {"path": str(good)})
    assert second.service.journal.by_path(str(good)).attempts == 1
    assert second.cleanup(str(good)) is True


def test_restart_resumes_a_pending_retry_when_due(env: Env) -> None:
    run = env.run("run-1")
    journal = SqliteJournal(env.state / "journal.sqlite3")
    job, _ = journal.submit(str(run), "logger-x", {"path": str(run)})
    journal.start(job.id)
    due = time.time() + 0.3
    journal.fail(job.id, "transient", due)
    journal.close()
    actor = env.actor()
    done = wait_job(actor, run, JobState.DONE, JobState.FAILED)
    assert done.state == JobState.DONE and done.attempts == 2
    assert done.updated >= due  # run again only once its retry was due


def test_teardown_stops_the_worker_and_closes_the_journal(env: Env) -> None:
    actor = env.actor()
    workers = list(actor.service.scheduler._threads)
    env.stop(actor)
    assert workers and not any(worker.is_alive() for worker in workers)
    with pytest.raises(JournalError, match="closed database"):
        actor.service.journal.counts()


def test_many_events_from_many_threads(env: Env, actor: CollectorArchiver) -> None:
    runs = [env.run(f"run-{i}", records=60) for i in range(6)]
    barrier = threading.Barrier(len(runs) * 2)

    def announce(path: Path) -> None:
        barrier.wait()
        actor.feed("logger-x", {"path": str(path)})

    threads = [threading.Thread(target=announce, args=(run,)) for run in runs for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for run in runs:
        job = wait_job(actor, run, JobState.DONE, JobState.FAILED)
        assert job.state == JobState.DONE and job.attempts == 1 and job.rows == 60
    wait_idle(actor)
    assert len(actor.service.journal.jobs()) == len(runs)


def test_one_job_per_run_however_the_path_is_spelled(env: Env, actor: CollectorArchiver) -> None:
    run = env.run("run-1")
    collected(actor, run)
    actor.feed("logger-x", {"path": f"{run}/"})
    actor.feed("logger-x", {"path": f"{run.parent}/./{run.name}"})
    wait_idle(actor)
    jobs = actor.service.journal.jobs()
    assert [(job.path, job.state, job.attempts) for job in jobs] == [(str(run), JobState.DONE, 1)]
