"""Run claims (``herocollector.run.claims``): one claim per run, heartbeats, stale take-over, marker.

Races are run for real: threads released by a barrier, and processes started with ``spawn``
and released by a multiprocessing barrier. Waiting is done on conditions with deadlines.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from herocollector.run.claims import ACQUIRED, CLAIM_FILE, COLLECTED, COLLECTED_FILE, HELD, ClaimResult, RunClaim
from herocollector.testing.actors import wait_for

TIMEOUT = 10.0


@pytest.fixture
def run(tmp_path: Path) -> Path:
    path = tmp_path / "run-1"
    path.mkdir()
    return path


@pytest.fixture
def claims() -> Any:
    """Make RunClaims and release the acquired ones at the end (stops their heartbeats)."""
    made: list[RunClaim] = []

    def make(path: Path, owner: str, **kwargs: Any) -> RunClaim:
        claim = RunClaim(path, owner, **kwargs)
        made.append(claim)
        return claim

    yield make
    for claim in made:
        if claim._beat is not None:
            claim._beat.stop()


def make_stale(run: Path, age: float = 3600.0) -> None:
    old = time.time() - age
    os.utime(run / CLAIM_FILE, (old, old))


def foreign_claim(run: Path, owner: str = "someone-else", age: float = 0.0) -> None:
    (run / CLAIM_FILE).write_text(json.dumps({"owner": owner, "host": "elsewhere", "pid": 1, "claimed_at": 0}))
    if age:
        make_stale(run, age)


def leftovers(run: Path) -> list[str]:
    """Files other than the claim and the marker (aside copies, temporaries)."""
    return sorted(p.name for p in run.iterdir() if p.name not in (CLAIM_FILE, COLLECTED_FILE))


# ----------------------------------------------------------------------------------------
# One actor
# ----------------------------------------------------------------------------------------


def test_acquire_on_a_fresh_dir(run: Path, claims: Any) -> None:
    claim = claims(run, "actor-a")
    result = claim.acquire()
    assert result.outcome == ACQUIRED
    content = json.loads((run / CLAIM_FILE).read_text())
    assert content["owner"] == "actor-a"
    assert content["host"] == socket.gethostname()
    assert content["pid"] == os.getpid()
    assert result.info["owner"] == "actor-a"
    assert not (run / COLLECTED_FILE).exists()


def test_another_owner_finds_it_held(run: Path, claims: Any) -> None:
    assert claims(run, "actor-a").acquire().outcome == ACQUIRED
    before = (run / CLAIM_FILE).read_text()
    result = claims(run, "actor-b", stale_after=60).acquire()
    assert result.outcome == HELD
    assert result.info["owner"] == "actor-a" and result.info["pid"] == os.getpid()
    assert 0 <= result.info["heartbeat_age"] < 60
    assert (run / CLAIM_FILE).read_text() == before  # untouched
    assert leftovers(run) == []


def test_same_owner_takes_its_own_claim_over(run: Path, claims: Any) -> None:
    # a restarted actor (same owner, new process) finds the claim of its previous life
    (run / CLAIM_FILE).write_text(json.dumps({"owner": "actor-a", "host": "h", "pid": 999999, "claimed_at": 0}))
    result = claims(run, "actor-a", stale_after=60).acquire()
    assert result.outcome == ACQUIRED
    content = json.loads((run / CLAIM_FILE).read_text())
    assert content["owner"] == "actor-a" and content["pid"] == os.getpid()
    assert leftovers(run) == []


def test_stale_claim_is_taken_over(run: Path, claims: Any) -> None:
    foreign_claim(run, "dead-actor", age=120)
    result = claims(run, "actor-b", stale_after=60).acquire()
    assert result.outcome == ACQUIRED
    assert json.loads((run / CLAIM_FILE).read_text())["owner"] == "actor-b"
    assert leftovers(run) == []  # the stale claim moved aside is gone


def test_claim_just_below_stale_after_is_held(run: Path, claims: Any) -> None:
    foreign_claim(run, "slow-actor", age=30)
    result = claims(run, "actor-b", stale_after=60).acquire()
    assert result.outcome == HELD
    assert 30 <= result.info["heartbeat_age"] < 60


def test_unreadable_claim_is_held_until_stale(run: Path, claims: Any) -> None:
    # a claim file caught between creation and its content (empty) belongs to nobody we know
    (run / CLAIM_FILE).write_bytes(b"")
    assert claims(run, "actor-b", stale_after=60).acquire().outcome == HELD
    make_stale(run, 120)
    assert claims(run, "actor-b", stale_after=60).acquire().outcome == ACQUIRED


def test_heartbeat_keeps_the_claim_fresh(run: Path, claims: Any) -> None:
    claim = claims(run, "actor-a", stale_after=5, heartbeat_every=0.05)
    assert claim.acquire().outcome == ACQUIRED
    make_stale(run, 3600)  # as if the heartbeat had not run for an hour
    old = (run / CLAIM_FILE).stat().st_mtime
    wait_for(lambda: (run / CLAIM_FILE).stat().st_mtime > old + 3000, "the heartbeat to refresh the mtime")
    result = claims(run, "actor-b", stale_after=5).acquire()
    assert result.outcome == HELD and result.info["heartbeat_age"] < 5
    claim.release()
    assert not claim._beat.is_alive()


def test_heartbeat_stops_on_release(run: Path, claims: Any) -> None:
    claim = claims(run, "actor-a", heartbeat_every=0.01)
    claim.acquire()
    beat = claim._beat
    assert beat is not None and beat.is_alive()
    claim.release()
    assert not beat.is_alive()
    assert not (run / CLAIM_FILE).exists()


def test_release_without_outputs_writes_no_marker(run: Path, claims: Any) -> None:
    claim = claims(run, "actor-a", heartbeat_every=0.05)
    assert claim.acquire().outcome == ACQUIRED
    claim.release(None)
    assert not (run / CLAIM_FILE).exists()
    assert not (run / COLLECTED_FILE).exists()
    assert leftovers(run) == []
    # free again, for anybody
    assert claims(run, "actor-b").acquire().outcome == ACQUIRED


def test_release_with_outputs_writes_the_marker(run: Path, claims: Any) -> None:
    claim = claims(run, "actor-a", heartbeat_every=0.05)
    assert claim.acquire().outcome == ACQUIRED
    outputs = {"/out/run-1/stock.arrow": 100, "/out/run-1/demand.arrow": 0}
    claim.release(outputs)
    assert not (run / CLAIM_FILE).exists()
    marker = json.loads((run / COLLECTED_FILE).read_text())
    assert marker["owner"] == "actor-a" and marker["pid"] == os.getpid()
    assert marker["host"] == socket.gethostname()
    assert marker["outputs"] == outputs
    assert marker["collected_at"] <= time.time()
    assert leftovers(run) == []  # the temporary was renamed into place

    # an empty result (a rule selecting nothing) is a success too
    second = tmp_run(run.parent, "run-2")
    claim = claims(second, "actor-a")
    claim.acquire()
    claim.release({})
    assert json.loads((second / COLLECTED_FILE).read_text())["outputs"] == {}


def tmp_run(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path


def test_acquire_after_the_marker_reports_collected(run: Path, claims: Any) -> None:
    first = claims(run, "actor-a")
    first.acquire()
    first.release({"/out/a.arrow": 7})
    for owner in ("actor-b", "actor-a"):
        result = claims(run, owner).acquire()
        assert result.outcome == COLLECTED
        assert result.info["owner"] == "actor-a" and result.info["outputs"] == {"/out/a.arrow": 7}
        assert not (run / CLAIM_FILE).exists()  # nothing claimed
    # the marker wins over a (stale) claim file
    foreign_claim(run, "dead-actor", age=3600)
    assert claims(run, "actor-b").acquire().outcome == COLLECTED


def test_a_claim_left_by_a_holder_killed_after_its_marker_is_removed(run: Path, claims: Any) -> None:
    """The holder writes the marker, then lets go: killed in between, it leaves a fresh claim behind."""
    first = claims(run, "actor-a")
    first.acquire()
    first.release({"/out/a.arrow": 7})
    foreign_claim(run, "actor-a")  # as fresh as a claim whose holder died a moment ago
    assert claims(run, "actor-b").acquire().outcome == COLLECTED
    assert not (run / CLAIM_FILE).exists()


def test_a_marker_written_while_the_claim_is_taken_makes_it_collected(
    run: Path, claims: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder finished and let go between this actor's look at the marker and its claim."""
    import herocollector.run.claims as claims_module

    real_dump = json.dump

    def dump(value: Any, fh: Any, **kwargs: Any) -> None:
        if "claimed_at" in value and not (run / COLLECTED_FILE).exists():
            (run / COLLECTED_FILE).write_text(json.dumps({"owner": "actor-a", "outputs": {}}))
        real_dump(value, fh, **kwargs)

    monkeypatch.setattr(claims_module.json, "dump", dump)
    result = claims(run, "actor-b").acquire()
    assert result.outcome == COLLECTED and result.info["owner"] == "actor-a"
    assert not (run / CLAIM_FILE).exists()


# ----------------------------------------------------------------------------------------
# Races
# ----------------------------------------------------------------------------------------


def _race_threads(run: Path, owners: list[str], stale_after: float = 60.0) -> list[ClaimResult]:
    barrier = threading.Barrier(len(owners))
    results: list[ClaimResult | None] = [None] * len(owners)
    made = [RunClaim(run, owner, stale_after=stale_after, heartbeat_every=0.05) for owner in owners]

    def take(index: int) -> None:
        barrier.wait()
        results[index] = made[index].acquire()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(owners))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    try:
        assert all(r is not None for r in results), "an acquire did not return"
        return results  # type: ignore[return-value]
    finally:
        for claim in made:
            if claim._beat is not None:
                claim._beat.stop()


@pytest.mark.parametrize("attempt", range(20))
def test_thread_race_on_a_free_run(tmp_path: Path, attempt: int) -> None:
    run = tmp_run(tmp_path, "run")
    owners = [f"actor-{i}" for i in range(8)]
    results = _race_threads(run, owners)
    winners = [owner for owner, r in zip(owners, results) if r.outcome == ACQUIRED]
    assert len(winners) == 1, [r.outcome for r in results]
    assert sorted(r.outcome for r in results) == [ACQUIRED] + [HELD] * 7
    assert json.loads((run / CLAIM_FILE).read_text())["owner"] == winners[0]
    assert leftovers(run) == []


@pytest.mark.parametrize("attempt", range(20))
def test_thread_race_on_a_stale_claim(tmp_path: Path, attempt: int) -> None:
    run = tmp_run(tmp_path, "run")
    foreign_claim(run, "dead-actor", age=3600)
    owners = [f"actor-{i}" for i in range(8)]
    results = _race_threads(run, owners, stale_after=60)
    winners = [owner for owner, r in zip(owners, results) if r.outcome == ACQUIRED]
    assert len(winners) == 1, [(r.outcome, r.info.get("owner")) for r in results]
    assert json.loads((run / CLAIM_FILE).read_text())["owner"] == winners[0]
    assert leftovers(run) == []


def _acquire_in_process(run: str, owner: str, stale_after: float, barrier: Any, results: Any) -> None:
    """Child process: wait for the others, try to claim, report, exit holding the claim."""
    claim = RunClaim(Path(run), owner, stale_after=stale_after, heartbeat_every=0.05)
    barrier.wait(timeout=60)
    result = claim.acquire()
    results.put((owner, os.getpid(), result.outcome, result.info.get("owner")))


def _race_processes(run: Path, count: int, stale_after: float) -> list[tuple[str, int, str, str | None]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(target=_acquire_in_process, args=(str(run), f"process-{i}", stale_after, barrier, results))
        for i in range(count)
    ]
    for process in processes:
        process.start()
    try:
        found = [results.get(timeout=30) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return found


def test_process_race_on_a_free_run(tmp_path: Path) -> None:
    run = tmp_run(tmp_path, "run")
    found = _race_processes(run, 4, stale_after=60)
    winners = [(owner, pid) for owner, pid, outcome, _ in found if outcome == ACQUIRED]
    assert len(winners) == 1, found
    assert sorted(outcome for _, _, outcome, _ in found) == [ACQUIRED] + [HELD] * 3
    content = json.loads((run / CLAIM_FILE).read_text())
    assert (content["owner"], content["pid"]) == winners[0]
    assert all(seen in (winners[0][0], None) for _, _, outcome, seen in found if outcome == HELD)
    assert leftovers(run) == []


def test_process_race_on_a_stale_claim(tmp_path: Path) -> None:
    run = tmp_run(tmp_path, "run")
    foreign_claim(run, "dead-actor", age=3600)
    found = _race_processes(run, 4, stale_after=60)
    winners = [(owner, pid) for owner, pid, outcome, _ in found if outcome == ACQUIRED]
    assert len(winners) == 1, found
    content = json.loads((run / CLAIM_FILE).read_text())
    assert (content["owner"], content["pid"]) == winners[0]
    assert leftovers(run) == []
