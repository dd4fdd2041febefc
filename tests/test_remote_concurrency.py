"""Remote calls that are concurrent and truthful: no call queues behind another, every call
answers before the caller's 10 s query timeout, and every answer is what happened.

HEROS serves the queries of one Zenoh link on one thread, one after the other; the actor serves
them on threads of its own, and a cleanup that cannot finish in a few seconds answers "accepted"
with an id that ``status()["tasks"]`` reports on.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.tasks import TASKS_RUNNING, RemoteTasks
from herocollector.errors import Busy, RunRefused
from herocollector.testing.actors import tracebacks, wait_for
from herocollector.testing.runs import journal_rows

if TYPE_CHECKING:
    from herocollector.testing.actors import Env

DEADLINE = 120.0
"""Seconds a test waits for a condition before it fails (generous: the machine is shared)."""


def trashed(run: Path) -> bool:
    """Whether the run's segments are in the trash (and none is left in place)."""
    return not list(run.glob("*.seg.zst")) and bool(list(run.glob("*.seg.zst.trash-*")))


def untouched(run: Path) -> bool:
    return bool(list(run.glob("*.seg.zst"))) and not list(run.glob("*.trash-*"))


@pytest.mark.e2e
def test_twelve_concurrent_cleanups_each_answer_in_time_with_the_truth(tmp_path: Path) -> None:
    from herocollector.actor.launcher import BossProcess, load_config, wait_for_hero, wait_until

    realm = f"hc-conc-{uuid.uuid4().hex[:12]}"
    runs, state = tmp_path / "runs", tmp_path / "state"
    arguments = {
        "default_metadata": {"output_root": str(tmp_path / "out")},
        "allowed_roots": [str(runs)],
        "state_dir": str(state),
        "scan_interval": None,
        "cleanup_grace": 3600,
    }
    boss = BossProcess(load_config("collector.json", arguments), realm, tmp_path / "boss").start()
    proxies: list[Any] = []
    try:
        actor = boss.remote(timeout=90)
        collected = []
        for i in range(9):
            path = runs / f"collected-{i}"
            write_simulated_run(path, records=200, entities=2, seed=i, labels={"experiment": "conc"})
            actor.collect(str(path))
            collected.append(path)
        wait_until(lambda: actor.status()["counts"]["done"] == 9, DEADLINE, "9 collected runs")
        # Three runs still being written (no _DONE), never announced: cleaned only with force, after _DONE.
        unfinished = []
        for i in range(3):
            path = runs / f"unfinished-{i}"
            write_simulated_run(path, records=200, entities=2, seed=100 + i, labels={"experiment": "conc"})
            (path / "_DONE").unlink()
            unfinished.append(path)
        calls: list[tuple[Path, dict[str, Any]]] = [(p, {}) for p in collected]
        calls += [(p, {"force": True, "timeout": 60_000}) for p in unfinished[:2]]
        calls += [(unfinished[2], {"force": True, "timeout": 6_000})]  # its _DONE never comes

        proxies = [wait_for_hero("collector", realm, 60, boss) for _ in calls]
        barrier = threading.Barrier(len(calls))
        answers: dict[Path, Any] = {}

        def call(proxy: Any, path: Path, kwargs: dict[str, Any]) -> None:
            barrier.wait()
            try:
                answers[path] = proxy.cleanup(str(path), **kwargs)
            except Exception as exc:  # noqa: BLE001 - a timeout or transport error is what the test looks for
                answers[path] = exc

        threads = [threading.Thread(target=call, args=(p, *c)) for p, c in zip(proxies, calls, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert not any(t.is_alive() for t in threads)

        # Every caller got an answer (a query that timed out would give None or RemoteTransportError).
        for path, answer in answers.items():
            assert answer is True or answer is False or isinstance(answer, dict), f"{path.name}: {answer!r}"
        for path in unfinished:
            assert isinstance(answers[path], dict) and answers[path]["accepted"] is True, answers[path]
            assert answers[path]["path"] == str(path)
            assert untouched(path), "an accepted cleanup ran before its _DONE"
        for path in unfinished[:2]:
            (path / "_DONE").touch()

        def outcome(path: Path) -> tuple[Any] | None:
            """The answer, or for an accepted one the result its task reports; None while it runs."""
            answer = answers[path]
            if not isinstance(answer, dict):
                return (answer,)
            tasks = {t["id"]: t for t in actor.status()["tasks"]}
            task = tasks[answer["id"]]
            assert task["path"] == str(path) and task["method"] == "cleanup"
            return None if task["state"] == "running" else (task["result"],)

        results = {
            p: wait_until(functools.partial(outcome, p), DEADLINE, f"the outcome for {p.name}")[0] for p in answers
        }
        jobs = {r["path"]: r["state"] for r in journal_rows(state)}
        for path in collected:
            assert results[path] is True, f"{path.name}: {answers[path]!r}"
            assert trashed(path) and jobs[str(path)] == "cleaned"
        for path in unfinished[:2]:
            assert results[path] is True and trashed(path)
        assert results[unfinished[2]] is False
        assert untouched(unfinished[2]), "a cleanup that answered False (timed out) ran anyway"
        assert str(unfinished[2]) not in jobs
    finally:
        for proxy in proxies:
            proxy._destroy_hero()
        boss.stop(timeout=10)
    assert tracebacks(boss.log_text()) == []


# -- RemoteTasks without HEROS ----------------------------------------------------------------------


@pytest.fixture
def tasks() -> Iterator[RemoteTasks]:
    remote = RemoteTasks()
    yield remote
    assert remote.wait(DEADLINE), "a task thread outlived its test"


def test_a_quick_task_answers_with_its_result(tasks: RemoteTasks) -> None:
    task = tasks.run("cleanup", "/r", lambda: True, answer_within=DEADLINE)
    assert task.state == "done" and task.result is True and task.finished is not None


def test_a_slow_task_is_reported_under_its_id_until_it_ends(tasks: RemoteTasks) -> None:
    release = threading.Event()
    task = tasks.run("cleanup", "/r", lambda: release.wait(DEADLINE), answer_within=0.0)
    assert task.state == "running" and task.id.startswith("cleanup-")
    assert [t["state"] for t in tasks.to_list()] == ["running"]
    release.set()
    wait_for(lambda: tasks.to_list()[0]["state"] == "done", "the task to end", DEADLINE)
    assert tasks.to_list()[0]["result"] is True


def test_a_failing_task_keeps_its_error(tasks: RemoteTasks) -> None:
    def fail() -> bool:
        raise RunRefused("outside allowed_roots", "/r")

    task = tasks.run("cleanup", "/r", fail, answer_within=DEADLINE)
    assert task.state == "error" and task.error == "RunRefused: /r: outside allowed_roots"
    assert isinstance(tasks.error(task.id), RunRefused)


def test_too_many_running_tasks_are_refused_without_starting_one(tasks: RemoteTasks) -> None:
    release = threading.Event()
    started = []
    for _ in range(TASKS_RUNNING):
        tasks.run("cleanup", "/r", lambda: release.wait(DEADLINE), answer_within=0.0)
    try:
        with pytest.raises(Busy, match="not started"):
            tasks.run("cleanup", "/r", lambda: started.append(1), answer_within=0.0)
    finally:
        release.set()
    assert tasks.wait(DEADLINE)
    assert started == [] and len(tasks.to_list()) == TASKS_RUNNING


def test_an_accepted_cleanup_ends_untouched_when_the_actor_stops(env: Env) -> None:
    actor = env.actor()
    run = env.run("unfinished")
    (run / "_DONE").unlink()
    answer = actor.cleanup(str(run), force=True, timeout=600_000)
    assert isinstance(answer, dict) and answer["accepted"] is True
    (task,) = [t for t in actor.status()["tasks"] if t["id"] == answer["id"]]
    assert task["state"] == "running" and task["result"] is None
    env.stop(actor)  # BOSS's teardown: the wait for _DONE ends, and nothing is cleaned afterwards
    (task,) = actor.tasks.to_list()
    assert task["state"] == "done" and task["result"] is False
    (run / "_DONE").touch()
    assert untouched(run)


def test_a_cleanup_that_is_refused_at_once_answers_false_without_a_task_left_running(env: Env) -> None:
    actor = env.actor()
    outside = env.run("elsewhere", folder=env.outside)
    assert actor.cleanup(str(outside)) is False
    assert [t["state"] for t in actor.status()["tasks"]] == ["done"]
    assert untouched(outside)


def test_verify_answers_its_result_and_a_bad_path_starts_no_task(env: Env) -> None:
    from herocollector.testing.actors import collected

    actor = env.actor()
    run = env.run("run-1")
    collected(actor, run)
    answer = actor.verify(str(run))
    assert answer["ok"] is True and "accepted" not in answer
    with pytest.raises(Exception, match="absolute path"):
        actor.verify("relative/run")
    assert [(t["method"], t["state"], t["result"]["ok"]) for t in actor.status()["tasks"]] == [("verify", "done", True)]


def test_a_forced_cleanup_of_a_run_about_to_be_collected_is_refused_at_once(env: Env) -> None:
    from herocollector.journal.base import JobState
    from herocollector.testing.actors import wait_job

    actor = env.actor()
    run = env.run("announced")
    (run / "_DONE").unlink()
    actor.feed("logger-x", {"path": str(run)})
    wait_job(actor, run, JobState.WAITING)
    # Waiting for its _DONE would race the collection of the same run once it came: refused, not accepted.
    assert actor.cleanup(str(run), force=True, timeout=None) is False
    assert untouched(run)
    (run / "_DONE").touch()
    wait_job(actor, run, JobState.DONE)
    assert actor.cleanup(str(run)) is True
    assert trashed(run)


def test_a_call_that_waits_too_long_for_a_thread_is_answered_busy_and_not_run(env: Env) -> None:
    from herocollector.actor.archiver import CALL_THREADS

    actor = env.actor()
    release = threading.Event()
    ran: list[str] = []
    holding: list[int] = []
    base = f"@object/{actor._realm}/busy-test"

    def slow(query: Any) -> None:  # holds a call thread until released
        holding.append(1)
        release.wait(DEADLINE)
        query.reply(str(query.key_expr), actor._serialize("slow"))

    def quick(query: Any) -> None:
        ran.append("quick")
        query.reply(str(query.key_expr), actor._serialize("quick"))

    # Served as the actor serves its remote methods (real Zenoh queryables on its session).
    actor._declare_queryable(f"{base}/slow", slow)
    actor._declare_queryable(f"{base}/quick", quick)
    held = [actor._session.get(f"{base}/slow") for _ in range(CALL_THREADS)]
    try:
        wait_for(lambda: len(holding) == CALL_THREADS, "every call thread to be held", DEADLINE)
        replies = list(actor._session.get(f"{base}/quick"))
    finally:
        release.set()
    assert len(replies) == 1 and replies[0].err is not None
    error = actor._deserialize(replies[0].err.payload.to_bytes())
    assert error.remote_type == "Busy" and "was not run" in str(error)
    assert ran == [], "a call answered Busy was run anyway"
    answers = [actor._deserialize(r.ok.payload.to_bytes()) for replies in held for r in replies]
    assert answers == ["slow"] * CALL_THREADS
    assert [actor._deserialize(r.ok.payload.to_bytes()) for r in actor._session.get(f"{base}/quick")] == ["quick"]
