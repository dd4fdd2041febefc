"""Nothing lost at scale: a fleet of actors, kill -9 loops, and a burst of events.

Real BOSS processes and Zenoh, one realm per test; every process a test starts is stopped in
its ``finally``. The random pauses before a kill are the fault injection itself, not waits.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector import Collector
from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import BossProcess, load_config, wait_until
from herocollector.run.claims import COLLECTED_FILE
from herocollector.testing.runs import journal_rows

pytestmark = pytest.mark.e2e
MEASURES = ("stock", "orders", "backlog")


def write_runs(root: Path, count: int, records: int) -> list[str]:
    return [
        write_simulated_run(root / f"run-{i:03d}", records=records, seed=i, labels={"run": i})["path"]
        for i in range(count)
    ]


def collector(tmp: Path, realm: str, name: str, **arguments: Any) -> BossProcess:
    config = load_config(
        "collector.json",
        {
            "default_metadata": {"output_root": str(tmp / "out")},
            "allowed_roots": [str(tmp / "runs")],
            "state_dir": str(tmp / f"state-{name}"),
            "retry_delay": 0.1,
            **arguments,
        },
    )
    config["_id"] = name
    return BossProcess(config, realm, tmp / "boss")


def logger(tmp: Path, realm: str, name: str = "demo-logger") -> BossProcess:
    config = load_config("demo_logger.json", {"root": str(tmp / "runs")})
    config["_id"] = name
    return BossProcess(config, realm, tmp / "boss")


def stop_all(processes: list[BossProcess]) -> None:
    threads = [threading.Thread(target=p.stop, kwargs={"timeout": 10}) for p in processes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def done_paths(state: Path) -> set[str]:
    return {row["path"] for row in journal_rows(state) if row["state"] == "done"}


def check_outputs(out: Path, runs: list[str]) -> None:
    """Every run's outputs exist, are complete, hold exactly its rows; nothing partial is left."""
    for run in runs:
        expected = Collector([run]).batches(rule={"match": {"key": "model", "op": "eq", "value": "supply_chain"}})
        total = sum(batch.num_rows for batch in expected)
        files = [out / "demo" / Path(run).name / f"{m}.arrow" for m in MEASURES]
        tables = [pa.ipc.open_file(f).read_all() for f in files]
        assert sum(t.num_rows for t in tables) == total
        assert all(t.schema.metadata[b"herocollector.logger_path"].decode() == run for t in tables)
    finals = sorted(str(p) for p in out.rglob("*.arrow"))
    assert len(finals) == len(runs) * len(MEASURES) == len(set(finals))


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (the BOSS worker runs the HERO)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, AttributeError, ProcessLookupError):
            continue
    return total


def test_fleet_collects_each_run_exactly_once_even_when_an_actor_dies(tmp_path: Path) -> None:
    realm = f"hc-fleet-{uuid.uuid4().hex[:10]}"
    runs = write_runs(tmp_path / "runs", 50, records=1500)
    claims = {"claim_runs": True, "claim_timeout": 3.0, "claim_heartbeat": 0.3, "chunk_bytes": 4096}
    actors = [collector(tmp_path, realm, f"collector-{i}", **claims) for i in range(3)]
    source = logger(tmp_path, realm)
    try:
        for process in [*actors, source]:
            process.start()
        for process in actors:
            process.remote(90)
        source.remote().announce_all(runs)
        states = [tmp_path / f"state-collector-{i}" for i in range(3)]
        wait_until(lambda: len(done_paths(states[0])) >= 10, 120, "the first runs")
        actors[0].kill()  # dies holding (or about to take) a claim
        for state in states[1:]:
            wait_until(lambda s=state: done_paths(s) == set(runs), 180, f"all runs done in {state.name}")

        # Every run was collected by exactly one actor, once. The killed actor may have died
        # after writing a run's collected marker but before logging it; that run's marker
        # then names the killed actor, and no survivor collected it again.
        collected_lines = []
        for process in actors:
            collected_lines += re.findall(r"job \d+ collected (\S+):", process.log_text())
        assert len(collected_lines) == len(set(collected_lines))
        markers = {run: json.loads(Path(run, COLLECTED_FILE).read_text()) for run in runs}
        unlogged = set(runs) - set(collected_lines)
        assert all(str(states[0]) in markers[run]["owner"] for run in unlogged), unlogged
        assert set(collected_lines) <= set(runs)
        assert all(not Path(run, ".herocollector.claim").exists() for run in runs)
        check_outputs(tmp_path / "out", runs)
    finally:
        stop_all([*actors, source])


def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    realm = f"hc-crash-{uuid.uuid4().hex[:10]}"
    runs = write_runs(tmp_path / "runs", 24, records=4000)
    rng = random.Random(7)
    state = tmp_path / "state-collector"
    process = collector(tmp_path, realm, "collector", chunk_bytes=4096).start()
    try:
        remote = process.remote()
        for run in runs:
            remote.collect(run)
        kills = 0
        while kills < 20:
            # Fault injection: let it work for a random moment, then SIGKILL the whole group.
            threading.Event().wait(rng.uniform(0.05, 0.8))
            process.kill()
            kills += 1
            process = collector(tmp_path, realm, "collector", chunk_bytes=4096).start()
            process.remote(90)
        wait_until(lambda: done_paths(state) == set(runs), 180, "every run collected")
        rows = journal_rows(state)
        assert len(rows) == len(runs) and all(row["state"] == "done" and row["attempts"] >= 1 for row in rows)
        db = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True)
        outputs = dict(db.execute("SELECT path, rows FROM outputs").fetchall())
        db.close()
        for path, count in outputs.items():
            assert pa.ipc.open_file(path).read_all().num_rows == count
        check_outputs(tmp_path / "out", runs)
        assert not list((tmp_path / "out").rglob("*.tmp"))
    finally:
        process.stop(timeout=10)


def test_burst_of_500_events_from_five_loggers(tmp_path: Path) -> None:
    realm = f"hc-burst-{uuid.uuid4().hex[:10]}"
    runs = [
        write_simulated_run(tmp_path / "runs" / f"run-{i:03d}", records=60, entities=1, seed=i)["path"]
        for i in range(500)
    ]
    actor = collector(tmp_path, realm, "collector", scan_interval=None)  # the events alone, no catch-up
    loggers = [logger(tmp_path, realm, f"logger-{i}") for i in range(5)]
    state = tmp_path / "state-collector"
    try:
        for process in [actor, *loggers]:
            process.start()
        actor.remote(90)  # six BOSS processes start at once on two cores
        heroes = [p.remote(90) for p in loggers]
        heroes[0].announce_all(runs[:50])  # warm-up, then the memory baseline
        wait_until(lambda: len(done_paths(state)) == 50, 120, "the warm-up runs")
        baseline = rss_kib(actor.process.pid)

        batches = [runs[50 + i * 90 : 50 + (i + 1) * 90] for i in range(5)]
        threads = [threading.Thread(target=h.announce_all, args=(b,)) for h, b in zip(heroes, batches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: done_paths(state) == set(runs), 300, "all 500 runs")
        after = rss_kib(actor.process.pid)

        rows = journal_rows(state)
        assert len(rows) == 500 and {row["state"] for row in rows} == {"done"}
        assert after - baseline < 64 * 1024, f"actor memory grew by {(after - baseline) / 1024:.1f} MiB"
    finally:
        stop_all([actor, *loggers])
