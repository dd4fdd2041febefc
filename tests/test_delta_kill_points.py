"""kill -9 of a service writing Delta tables right before and right after a commit, then restart.

A subprocess runs a real :class:`~herocollector.CollectionService` with ``format: "delta"`` over
real runs (the real ``DataLogger``). Its driver freezes the process at the kill point (right before
``commit_run`` is called, after the run was decoded and staged; or right after it returned, before
the journal records the job done), writes a marker file, and the test SIGKILLs it and starts it
again. At the end no run is missing and none appears twice: each run's rows in the table are
exactly what was recorded, under one commit, and nothing staged is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

from herocollector.journal.sqlite import JobState
from herocollector.output.delta import run_app_id
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import RecordedRun, build_run, journal_rows
from herocollector.testing.tables import assert_as_recorded, commits_per_run

SERVICE = textwrap.dedent(
    """
    import json, logging, sys, threading
    from pathlib import Path
    import herocollector.service.table_commit as table_commit
    from herocollector import CollectionService, ServiceConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    arguments, point, marker, runs = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
    original = table_commit.commit_run
    frozen = threading.Event()

    def freeze():
        marker.write_text("frozen")
        frozen.wait()  # the test kills this process now

    def commit_run(*args, **kwargs):
        if point == "before":
            freeze()
        result = original(*args, **kwargs)
        if point == "after":
            freeze()
        return result

    table_commit.commit_run = commit_run
    service = CollectionService(ServiceConfig.from_arguments(**arguments))
    for run in runs:
        service.submit("logger", {"path": run})  # a repeated announcement of a collected run is left alone
    idle = service.wait_idle(240)
    service.close()
    sys.exit(0 if idle else 3)
    """
)

COLUMNS = ("experiment", "measure")


def one_life(log_path: Path, point: str, arguments: dict[str, Any], runs: list[RecordedRun]) -> bool:
    """Run the service until its kill point and SIGKILL it there; ``none``: let it finish.

    Returns:
        Whether it was killed (False: it had nothing left to do and finished first).
    """
    marker = log_path.with_suffix(".frozen")
    marker.unlink(missing_ok=True)
    paths = json.dumps([str(run.path) for run in runs])
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", SERVICE, json.dumps(arguments), point, str(marker), paths],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            if point == "none":
                assert child.wait(timeout=240) == 0, log_path.read_text()[-3000:]
                return False
            wait_for(lambda: marker.exists() or child.poll() is not None, f"kill point {point}", timeout=120)
            if not marker.exists():
                assert child.returncode == 0, log_path.read_text()[-3000:]
                return False
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
            return True
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_kill_9_right_before_and_right_after_the_commit_loses_no_run_and_commits_none_twice(tmp_path: Path) -> None:
    runs = [build_run(tmp_path / "runs" / f"run-{i}", i + 1, n_records=300) for i in range(10)]
    table = tmp_path / "tables" / "measurements"
    state = tmp_path / "state"
    arguments: dict[str, Any] = {
        "save_template": "{{ output_root }}/measurements",
        "output_root": str(tmp_path / "tables"),
        "format": "delta",
        "columns": list(COLUMNS),
        "allowed_roots": [str(tmp_path / "runs")],
        "state_dir": str(state),
        "workers": 1,
        "retry_delay": 0.05,
        "scan_interval": None,
        "compact_interval": None,
    }
    kills = {"before": 0, "after": 0}
    for life in range(8):
        point = "before" if life % 2 == 0 else "after"
        if one_life(tmp_path / f"life-{life}.log", point, arguments, runs):
            kills[point] += 1
    one_life(tmp_path / "last.log", "none", arguments, runs)
    assert kills == {"before": 4, "after": 4}, kills

    jobs = journal_rows(state)
    assert sorted(job["path"] for job in jobs) == sorted(str(run.path) for run in runs), "one job per run"
    assert all(job["state"] == JobState.DONE for job in jobs), [dict(job) for job in jobs]
    delta = DeltaTable(str(table))
    content = delta.to_pyarrow_table()
    commits = commits_per_run(delta)
    for run in runs:
        path = str(run.path)
        assert_as_recorded(content, run, COLUMNS, f"{path}: rows as recorded")
        assert commits.get(path) == 1, f"{path}: {commits.get(path)} commits"
        job = next(job for job in jobs if job["path"] == path)
        assert delta.transaction_version(run_app_id(path)) == job["id"]
    assert content.num_rows == sum(len(run) for run in runs), "no row twice"
    staging = state / "staging"
    assert not staging.exists() or not any(staging.rglob("*")), sorted(staging.rglob("*"))
