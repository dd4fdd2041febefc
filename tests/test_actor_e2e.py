"""End-to-end: the actor under BOSS, a logger HERO in another process, events over Zenoh.

Every test has its own realm and its own folders, starts the BOSS processes it needs and
stops them (the whole process group) before it ends.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector.actor.launcher import BossProcess, load_config, wait_until
from herocollector.testing.runs import journal_rows

pytestmark = pytest.mark.e2e

MEASURES = ("stock", "orders", "backlog")


class Stack:
    """A collector actor and a demo logger, each under its own BOSS, in one realm."""

    def __init__(self, tmp: Path, collector_args: dict[str, Any] | None = None, records: int = 1500) -> None:
        self.realm = f"hc-e2e-{uuid.uuid4().hex[:12]}"
        self.runs = tmp / "runs"
        self.out = tmp / "out"
        self.state = tmp / "state"
        self.work = tmp / "boss"
        self.collector_args = {
            "default_metadata": {"output_root": str(self.out)},
            "allowed_roots": [str(self.runs)],
            "state_dir": str(self.state),
            "retry_delay": 0.1,
            "max_retries": 1,
            **(collector_args or {}),
        }
        self.collector = BossProcess(load_config("collector.json", self.collector_args), self.realm, self.work)
        logger_config = load_config(
            "demo_logger.json", {"root": str(self.runs), "records": records, "backend": "data_logger"}
        )
        self.logger = BossProcess(logger_config, self.realm, self.work)

    def start(self) -> Stack:
        self.collector.start()
        self.logger.start()
        self.actor = self.collector.remote()
        self.logger_hero = self.logger.remote()
        return self

    def restart_collector(self) -> None:
        self.collector = BossProcess(load_config("collector.json", self.collector_args), self.realm, self.work).start()
        self.actor = self.collector.remote()

    def stop(self) -> None:
        for process in (self.logger, self.collector):
            process.stop(timeout=10)

    def journal_rows(self) -> list[sqlite3.Row]:
        """The journal as the actor wrote it (read-only; the actor may still be writing)."""
        return journal_rows(self.state)

    def wait_done(self, count: int, timeout: float = 60.0) -> dict[str, Any]:
        def enough() -> dict[str, Any] | None:
            status = self.actor.status()
            counts = status["counts"]
            return status if counts["done"] + counts["cleaned"] + counts["failed"] >= count else None

        return wait_until(enough, timeout, f"{count} finished jobs")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s.start()
    finally:
        s.stop()


def expected_rows(run: str, measure: str) -> pa.Table:
    """What the reference data_logger.Collector writes for one measure of a single-segment run."""
    import data_logger
    from tools.label_selector import Rule

    class Sink:
        schema = None

        def __init__(self) -> None:
            self.batches: list[pa.RecordBatch] = []

        def write_batch(self, batch: pa.RecordBatch) -> None:
            self.batches.append(batch)

    sink = Sink()
    rule = Rule(
        {
            "all": [
                {"match": {"key": "model", "op": "eq", "value": "supply_chain"}},
                {"match": {"key": "measure", "op": "eq", "value": measure}},
            ]
        }
    )
    data_logger.Collector([run]).collect(sink, rule=rule, columns=["organisation", "experiment", "entity"])
    return pa.Table.from_batches(sink.batches)


def test_runs_are_collected_and_controlled_remotely(stack: Stack) -> None:
    runs = stack.logger_hero.simulate(3)
    status = stack.wait_done(3)
    assert status["counts"]["done"] == 3, status
    assert stack.actor.failed() == []

    for run in runs:
        path = Path(run["path"])
        job = next(j for j in status["recent"] if j["path"] == str(path))
        assert set(job["outputs"]) == {str(stack.out / "demo" / path.name / f"{m}.arrow") for m in MEASURES}
        for measure in MEASURES:
            output = stack.out / "demo" / path.name / f"{measure}.arrow"
            table = pa.ipc.open_file(output).read_all()
            # Row for row what the reference collector gives for the same streams.
            assert table.replace_schema_metadata(None).equals(expected_rows(str(path), measure))
            meta = table.schema.metadata
            assert meta[b"herocollector.logger_path"].decode() == str(path)
            assert meta[b"herocollector.source"].decode() == "demo-logger"
            assert job["outputs"][str(output)] == table.num_rows
        assert not list(stack.out.rglob("*.tmp"))

    # A repeated event for a collected run is not collected twice.
    first = runs[0]["path"]
    stack.logger_hero.announce({"path": first})
    stack.actor.collect(first)
    again = stack.actor.status()
    assert again["counts"]["done"] == 3 and len(stack.journal_rows()) == 3

    # cleanup through RemoteHERO: segments go, streams/ stays, the journal says cleaned.
    assert stack.actor.cleanup(first) is True
    assert not list(Path(first).glob("*.seg.zst")) and (Path(first) / "streams").is_dir()
    assert stack.actor.status()["counts"] == {
        "pending": 0,
        "waiting": 0,
        "running": 0,
        "done": 2,
        "failed": 0,
        "cleaned": 1,
    }
    assert stack.actor.cleanup() is True  # every collected, not yet cleaned run
    assert all(not list(Path(r["path"]).glob("*.seg.zst")) for r in runs)
    assert [row["state"] for row in stack.journal_rows()] == ["cleaned"] * 3


def test_failures_are_kept_and_retried_remotely(stack: Stack) -> None:
    missing = stack.runs / "announced-too-early"
    stack.logger_hero.announce({"path": str(missing)})
    stack.logger_hero.announce({"no_path_here": 1})
    stack.wait_done(2)
    failed = {job["path"]: job for job in stack.actor.failed()}
    assert "does not exist" in failed[str(missing)]["error"]
    assert failed[str(missing)]["attempts"] == 2  # the first try and max_retries=1 retry
    assert "malformed event" in failed[None]["error"]

    # A good run announced after the failures is still collected.
    good = stack.logger_hero.simulate(1)[0]["path"]
    wait_until(
        lambda: any(j["path"] == good and j["state"] == "done" for j in stack.actor.status()["recent"]),
        60,
        "the good run",
    )

    # The cause goes away; retry() collects the failed run, and the refusal of a cleanup
    # of a run that was never collected deletes nothing.
    from herocollector.actor.demo import write_simulated_run

    write_simulated_run(missing, records=300, labels={"experiment": "late"}, backend="data_logger")
    assert stack.actor.cleanup(str(missing)) is False
    assert list(missing.glob("*.seg.zst"))
    assert stack.actor.retry(str(missing)) == 1
    wait_until(
        lambda: (
            not any(j["path"] == str(missing) for j in stack.actor.failed())
            and stack.actor.status()["counts"]["done"] == 2
        ),
        60,
        "the retried run",
    )
    assert (stack.out / "late" / "announced-too-early" / "stock.arrow").exists()


def test_actor_killed_mid_collection_finishes_after_restart(tmp_path: Path) -> None:
    # Tiny decode chunks make a collection take long enough to be caught while running.
    s = Stack(tmp_path, collector_args={"chunk_bytes": 4096}, records=60_000)
    try:
        s.start()
        runs = [r["path"] for r in s.logger_hero.simulate(2)]
        wait_until(lambda: any(row["state"] == "running" for row in s.journal_rows()), 60, "a running job")
        s.collector.kill()
        killed = {row["path"]: row["state"] for row in s.journal_rows()}
        assert "running" in killed.values()
        for final in s.out.rglob("*.arrow"):  # whatever was committed is complete
            pa.ipc.open_file(final).read_all()

        s.restart_collector()
        s.wait_done(2)
        rows = s.journal_rows()
        assert [row["state"] for row in rows] == ["done", "done"]
        assert {row["path"] for row in rows} == set(runs)
        assert not list(s.out.rglob("*.tmp"))
        for run in runs:
            for measure in MEASURES:
                table = pa.ipc.open_file(s.out / "demo" / Path(run).name / f"{measure}.arrow").read_all()
                assert table.replace_schema_metadata(None).equals(expected_rows(run, measure))
    finally:
        s.stop()
