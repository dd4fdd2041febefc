"""A fenced-out actor never commits to a table.

Actor A (a service subprocess on a PostgreSQL journal) decodes and stages a run, then is frozen
with SIGSTOP right before its commit, past its lease. Actor B takes the job over and commits the
run. When A is continued, the lease check right before its commit finds the lease gone: A commits
nothing, and the table holds the run once.
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

from herocollector import CollectionService, ServiceConfig
from herocollector.events import RunCollected
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import build_run
from herocollector.testing.servers import PostgresTestServer
from herocollector.testing.tables import assert_as_recorded

ACTOR_A = textwrap.dedent(
    """
    import json, logging, sys, time
    from pathlib import Path
    import herocollector.service.table_commit as table_commit
    from herocollector import CollectionService, ServiceConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    arguments, run, marker, resume = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    original = table_commit.commit_run

    def commit_run(*args, **kwargs):
        marker.write_text("staged")  # the test stops this process now, and continues it later
        while not resume.exists():
            time.sleep(0.01)
        return original(*args, **kwargs)

    table_commit.commit_run = commit_run
    service = CollectionService(ServiceConfig.from_arguments(**arguments))
    service.submit("logger", {"path": run})
    while not Path(str(resume) + ".stop").exists():
        time.sleep(0.05)
    service.close()
    """
)

COLUMNS = ("experiment", "measure")


def test_an_actor_fenced_out_before_its_commit_commits_nothing(tmp_path: Path, postgres: PostgresTestServer) -> None:
    run = build_run(tmp_path / "runs" / "run", 3, n_records=300)
    journal = postgres.database()
    common: dict[str, Any] = {
        "save_template": "{{ output_root }}/measurements",
        "output_root": str(tmp_path / "tables"),
        "format": "delta",
        "columns": list(COLUMNS),
        "allowed_roots": [str(tmp_path / "runs")],
        "journal": journal,
        "lease_timeout": 2.0,
        "workers": 1,
        "retry_delay": 0.05,
        "scan_interval": None,
        "compact_interval": None,
    }
    marker, resume = tmp_path / "staged", tmp_path / "resume"
    log_path = tmp_path / "actor-a.log"
    arguments_a = {**common, "state_dir": str(tmp_path / "state-a")}
    collected: list[RunCollected] = []
    with log_path.open("wb") as log:
        actor_a = subprocess.Popen(
            [sys.executable, "-c", ACTOR_A, json.dumps(arguments_a), str(run.path), str(marker), str(resume)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        service_b: CollectionService | None = None
        try:
            wait_for(lambda: marker.exists() or actor_a.poll() is not None, "actor A staged the run", timeout=120)
            assert actor_a.poll() is None, log_path.read_text()[-3000:]
            os.kill(actor_a.pid, signal.SIGSTOP)
            config_b = ServiceConfig.from_arguments(**{**common, "state_dir": str(tmp_path / "state-b")})
            service_b = CollectionService(config_b, on_collected=collected.append)
            wait_for(lambda: collected, "actor B took the job over and collected the run", timeout=120)
            resume.write_text("go")
            os.kill(actor_a.pid, signal.SIGCONT)
            wait_for(lambda: "fenced out" in log_path.read_text(), "actor A fenced out at its commit", timeout=120)
        finally:
            if service_b is not None:
                service_b.close()
            os.kill(actor_a.pid, signal.SIGCONT)
            Path(str(resume) + ".stop").write_text("stop")
            try:
                actor_a.wait(timeout=60)
            finally:
                if actor_a.poll() is None:
                    actor_a.kill()
                    actor_a.wait()
    delta = DeltaTable(str(tmp_path / "tables" / "measurements"))
    writes = [c for c in delta.history() if c["operation"] in ("WRITE", "CREATE TABLE")]
    assert len(writes) == 1, writes
    assert writes[0]["herocollector.actor"] == config_b.owner
    assert_as_recorded(delta.to_pyarrow_table(), run, COLUMNS)
