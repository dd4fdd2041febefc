"""A fleet on a real PostgreSQL journal and a real S3 server: 3 actors in separate BOSS processes
collect 60 runs exactly once, with one actor SIGKILLed midway, and with one SIGSTOPped past its
lease and then resumed (it publishes nothing and marks nothing done).
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from herocollector.actor.launcher import wait_until
from herocollector.output.manifest import Manifest
from herocollector.testing.fleet import Fleet
from herocollector.testing.servers import PostgresTestServer, S3TestServer

pytestmark = pytest.mark.e2e
MEASURES = ("stock", "orders", "backlog")


@pytest.fixture
def fleet(tmp_path: Path, postgres: PostgresTestServer, s3: S3TestServer) -> Fleet:
    f = Fleet(tmp_path, postgres.database(), s3.bucket(), s3.options, lease_timeout=2.0, chunk_bytes=8192)
    yield f
    f.stop()


def check_exactly_once(fleet: Fleet, s3: S3TestServer, runs: list[str]) -> None:
    """One job per run, done; one output set and one manifest per run; nothing else."""
    jobs = fleet.jobs()
    assert [(job["source"], job["error"]) for job in jobs if job["path"] is None] == []  # no event refused
    assert sorted(job["path"] for job in jobs) == sorted(runs)
    assert {job["state"] for job in jobs} == {"done"}
    client = s3.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=fleet.bucket)
        for o in page.get("Contents", [])
    ]
    manifests = [k for k in keys if k.rsplit("/", 1)[-1].startswith("_manifest-")]
    data = sorted(k for k in keys if k not in manifests)
    assert data == sorted(f"c/{Path(run).name}/{m}.arrow" for run in runs for m in MEASURES)
    assert len(manifests) == len(runs)
    by_job = {job["id"]: job for job in jobs}
    for key in manifests:
        manifest = Manifest.from_json(client.get_object(Bucket=fleet.bucket, Key=key)["Body"].read())
        job = by_job[manifest.job]
        assert manifest.run == job["path"] and len(manifest.outputs) == len(MEASURES)
        assert sum(e.rows for e in manifest.outputs) == job["rows"]


def collected_lines(fleet: Fleet) -> list[str]:
    return [path for p in fleet.collectors for path in re.findall(r"job \d+ collected (\S+):", p.log_text())]


def test_three_actors_collect_sixty_runs_exactly_once(fleet: Fleet, s3: S3TestServer) -> None:
    runs = fleet.write_runs(60, records=600)
    fleet.start(3)
    fleet.announce(runs)
    wait_until(lambda: fleet.done() == set(runs), 240, "all 60 runs")
    check_exactly_once(fleet, s3, runs)
    lines = collected_lines(fleet)
    assert sorted(lines) == sorted(runs)  # each run collected by one actor, once
    assert len({p.name for p in fleet.collectors if re.search(r"job \d+ collected", p.log_text())}) >= 2


def test_a_killed_actor_leaves_every_run_collected_once(fleet: Fleet, s3: S3TestServer) -> None:
    runs = fleet.write_runs(60, records=1500)
    fleet.start(3)
    fleet.announce(runs)
    wait_until(lambda: len(fleet.done()) >= 10, 240, "the first runs")
    fleet.signal(0, signal.SIGKILL)
    wait_until(lambda: fleet.done() == set(runs), 300, "all runs after the kill")
    check_exactly_once(fleet, s3, runs)
    lines = collected_lines(fleet)
    assert len(lines) == len(set(lines))  # never collected twice


def test_an_actor_paused_past_its_lease_is_fenced_and_publishes_nothing(fleet: Fleet, s3: S3TestServer) -> None:
    runs = fleet.write_runs(30, records=3000)
    fleet.start(3)
    fleet.announce(runs)
    owner = fleet.owner(1)

    def held_by_actor_1() -> dict | None:
        return next((j for j in fleet.jobs() if j["state"] == "running" and j["lease_owner"] == owner), None)

    held = wait_until(held_by_actor_1, 120, "actor 1 to hold a job")
    fleet.signal(1, signal.SIGSTOP)
    stopped_at = time.monotonic()

    def taken_over() -> dict | None:
        job = next(j for j in fleet.jobs() if j["id"] == held["id"])
        return job if job["token"] > held["token"] else None

    wait_until(taken_over, 60, "another actor to take the job over")
    fenced_after = time.monotonic() - stopped_at
    wait_until(lambda: fleet.done() == set(runs) - _held_elsewhere(fleet, owner), 240, "the other runs")
    fleet.signal(1, signal.SIGCONT)
    wait_until(
        lambda: re.search(rf"job {held['id']} .*fenced out", fleet.collectors[1].log_text()),
        60,
        "the resumed actor to notice it was fenced out",
    )
    wait_until(lambda: fleet.done() == set(runs), 240, "all runs")
    check_exactly_once(fleet, s3, runs)
    job = next(j for j in fleet.jobs() if j["id"] == held["id"])
    assert job["token"] > held["token"]  # marked done under the new token, not the paused one
    head = s3.client().head_object(Bucket=fleet.bucket, Key=f"c/{Path(job['path']).name}/stock.arrow")
    assert int(head["Metadata"]["herocollector-token"]) > held["token"]  # published by the new holder
    assert f"collected {job['path']}:" not in fleet.collectors[1].log_text()
    # the paused actor renewed at most lease/3 before it stopped; its lease ran out after that
    assert 2.0 * 2 / 3 - 0.1 <= fenced_after < 30.0, fenced_after


def _held_elsewhere(fleet: Fleet, owner: str) -> set[str]:
    """Runs still leased by the paused actor (they are taken over once its lease ran out)."""
    return {j["path"] for j in fleet.jobs() if j["state"] == "running" and j["lease_owner"] == owner}
