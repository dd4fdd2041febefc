"""A fleet writing one Delta table: three BOSS actors on one PostgreSQL journal, one of them SIGKILLed midway.

60 real runs (the real ``DataLogger``) go into one table, local or on a real S3 server. Afterwards
the table holds every run's records exactly once, equal to what was recorded, with one commit per
run: concurrent commits from several processes are resolved by Delta's optimistic concurrency,
and the killed actor's jobs are taken over under new leases.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from herocollector.actor.launcher import wait_until
from herocollector.output.delta import open_table, run_app_id
from herocollector.testing.fleet import Fleet
from herocollector.testing.runs import RecordedRun, build_run
from herocollector.testing.servers import PostgresTestServer, S3TestServer
from herocollector.testing.tables import assert_as_recorded, commits_per_run

pytestmark = pytest.mark.e2e
COLUMNS = ("experiment", "measure")
RUNS = 60


@pytest.fixture
def fleet(tmp_path: Path, postgres: PostgresTestServer, s3: S3TestServer) -> Iterator[Fleet]:
    f = Fleet(tmp_path, postgres.database(), s3.bucket(), s3.options, lease_timeout=2.0)
    yield f
    f.stop()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_three_actors_commit_sixty_runs_to_one_table_exactly_once(fleet: Fleet, s3: S3TestServer, where: str) -> None:
    runs = [build_run(fleet.runs / f"run-{i:03d}", i + 1, n_records=200, n_streams=3) for i in range(RUNS)]
    root = str(fleet.tmp / "tables") if where == "local" else f"s3://{fleet.bucket}/tables"
    options = s3.options if where == "s3" else {}
    fleet.arguments.update(
        save_template="{{ output_root }}/measurements",
        default_metadata={"output_root": root},
        storage_options=options,
        format="delta",
        columns=list(COLUMNS),
        compact_interval=None,
        rule=None,
    )
    fleet.start(3)
    paths = [str(run.path) for run in runs]
    fleet.announce(paths)
    wait_until(lambda: len(fleet.done()) >= 10, 240, "the first runs")
    fleet.signal(0, signal.SIGKILL)
    wait_until(lambda: fleet.done() == set(paths), 300, "every run after the kill")
    check_table(f"{root}/measurements", options, runs, fleet)


def check_table(table: str, options: dict[str, object], runs: list[RecordedRun], fleet: Fleet) -> None:
    """Each run's records exactly once, as recorded, under one commit (and the transaction of its job)."""
    jobs = {job["path"]: job for job in fleet.jobs()}
    assert sorted(jobs) == sorted(str(run.path) for run in runs), "one job per run"
    delta = open_table(table, options)
    assert delta is not None
    content = delta.to_pyarrow_table()
    commits = commits_per_run(delta)
    for run in runs:
        path = str(run.path)
        assert_as_recorded(content, run, COLUMNS, f"{path}: not as recorded")
        assert commits.get(path) == 1, f"{path}: {commits.get(path)} commits"
        assert delta.transaction_version(run_app_id(path)) == jobs[path]["id"]
    assert content.num_rows == sum(len(run) for run in runs), "no row twice"
    actors = {commit.get("herocollector.actor") for commit in delta.history() if "herocollector.actor" in commit}
    assert len(actors) >= 2, "the runs were shared out among the actors"
