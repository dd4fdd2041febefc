"""Following runs while they are written: fresh, exact, once; through crashes and a takeover.

A logger process (the real ``DataLogger``, :mod:`herocollector.testing.live`) writes one run at a
steady rate, with rotation, so that several segments are closed mid-run. The service follows it
(``follow: true``) and a reader polls the table meanwhile. Because chunks are prefixes of each
stream's records in file order, the number of a stream's rows in the table says which of its
records are there: the j-th record of a stream is in once the stream has more than j rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from herocollector import CollectionService, ServiceConfig
from herocollector.events import RunCollected, RunProgress
from herocollector.output.delta import open_table
from herocollector.testing.actors import wait_for
from herocollector.testing.live import Freshness, LiveLogger, LiveTruth
from herocollector.testing.servers import PostgresTestServer
from herocollector.testing.tables import check_followed
from herocollector.testing.tables import chunk_commits as chunk_numbers

COLUMNS = ("experiment", "measure")
FOLLOW_INTERVAL = 2.0
SECONDS, RATE = (
    12.0,
    4000.0,
)  # ~48k records, ~0.25 MB/s of segments, a segment closed every second or so (the minute-long run is in test_follow_e2e)


class Logger(LiveLogger):
    """The live logger of these tests (rate and length as set above unless told)."""

    def __init__(self, tmp: Path, name: str = "run", seconds: float = SECONDS, rate: float = RATE, **kw: Any) -> None:
        super().__init__(tmp, name, seconds=seconds, rate=rate, **kw)


def arguments(tmp: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "save_template": "{{ output_root }}/measurements",
        "output_root": str(tmp / "tables"),
        "format": "delta",
        "follow": True,
        "follow_interval": FOLLOW_INTERVAL,
        "columns": list(COLUMNS),
        "allowed_roots": [str(tmp / "runs")],
        "state_dir": str(tmp / "state"),
        "scan_interval": None,
        "compact_interval": None,
        "timeout": None,
        "retry_delay": 0.05,
        **overrides,
    }


def chunk_commits(table: str) -> list[int]:
    """The chunk number of every commit that wrote rows of a followed run, oldest first."""
    return chunk_numbers(DeltaTable(table))


def check_exact(table: str, truth: LiveTruth) -> None:
    """The table holds the run exactly as recorded, each chunk committed once."""
    check_followed(table, truth.run, COLUMNS)


@pytest.fixture
def logger_cleanup() -> Iterator[list[Logger]]:
    loggers: list[Logger] = []
    yield loggers
    for logger in loggers:
        logger.stop()


def test_the_reader_counts_each_streams_rows_of_the_current_files_reading_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    table = str(tmp_path / "t")
    freshness = Freshness()
    freshness.poll(table)  # no table yet: nothing seen
    assert freshness.seen == {}
    write_deltalake(table, pa.table({"stream_id": pa.array([1, 2, 2], pa.uint32())}))
    freshness.poll(table)
    write_deltalake(table, pa.table({"stream_id": pa.array([2, 3], pa.uint32())}), mode="append")
    reads: list[str] = []
    real_read = pq.read_table

    def counted(source: str, **kw: Any) -> pa.Table:
        reads.append(source)
        return real_read(source, **kw)

    monkeypatch.setattr(pq, "read_table", counted)
    freshness.poll(table)
    DeltaTable(table).optimize.compact()  # the same rows in a new file; the old ones leave the version
    freshness.poll(table)
    freshness.poll(table)
    assert {sid: len(times) for sid, times in freshness.seen.items()} == {1: 1, 2: 3, 3: 1}
    assert len(reads) == 2 and len(set(reads)) == 2  # the appended file, then the compacted one: once each
    assert freshness.seen[2][0] < freshness.seen[2][2]  # the third row of stream 2 was seen a poll later


def test_a_followed_run_is_queryable_within_the_interval_and_exact_at_the_end(
    tmp_path: Path, logger_cleanup: list[Logger]
) -> None:
    progress: list[RunProgress] = []
    collected: list[RunCollected] = []
    config = ServiceConfig.from_arguments(**arguments(tmp_path))
    service = CollectionService(config, on_collected=collected.append, on_progress=progress.append)
    table = str(tmp_path / "tables" / "measurements")
    freshness = Freshness()
    lags: list[float | None] = []
    refusals: list[str] = []
    stop = threading.Event()
    path = str(tmp_path / "runs" / "run")

    def poll() -> None:
        while not stop.is_set():
            freshness.poll(table)
            lags.extend(run.lag for run in service.status().following)
            refusals.append(service.cleanup_refusal(path) or "")
            stop.wait(0.2)

    reader = threading.Thread(target=poll, name="table-reader")
    try:
        logger = Logger(tmp_path)
        logger_cleanup.append(logger)
        service.submit("logger", {"path": str(logger.path)})
        reader.start()
        truth = logger.truth()
        wait_for(lambda: collected, "the run collected at _DONE", 120)
    finally:
        stop.set()
        if reader.is_alive():
            reader.join()
        service.close()
    check_exact(table, truth)
    assert len(progress) >= 3 and [p.chunk for p in progress] == sorted({p.chunk for p in progress})
    assert progress[-1].total <= len(truth.run)
    assert any(lag is not None for lag in lags), "status() listed the run being followed, with its lag"
    assert any("being followed" in refusal for refusal in refusals), "a cleanup meanwhile is refused, with the reason"
    last = DeltaTable(table).history(1)[0]
    assert last["herocollector.reason"].startswith("compaction:"), "compact_on_done merged the chunk files at the end"
    assert last["herocollector.run"] == str(logger.path)
    assert len(DeltaTable(table).file_uris()) < len(chunk_commits(table)), "fewer files than chunks"
    # Freshness: a record appears at most follow_interval + 3 s after the logger wrote it.
    latencies = freshness.latencies(truth)
    assert len(latencies) > 0.8 * len(truth.run), "most records were seen while the run was written"
    assert max(latencies) <= FOLLOW_INTERVAL + 3, f"max {max(latencies):.2f} s"


SERVICE = textwrap.dedent(
    """
    import json, logging, sys, time
    from pathlib import Path
    from herocollector import CollectionService, ServiceConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    arguments, run, stop = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    with CollectionService(ServiceConfig.from_arguments(**arguments)) as service:
        service.submit("logger", {"path": run})
        while not stop.exists():
            time.sleep(0.05)
    """
)


class Service:
    """A service subprocess following one run."""

    def __init__(self, tmp: Path, name: str, args: dict[str, Any], run: Path) -> None:
        self.stop_file = tmp / f"{name}.stop"
        self.log = tmp / f"{name}.log"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SERVICE, json.dumps(args), str(run), str(self.stop_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        self.stop_file.write_text("stop")
        try:
            self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def _chunks_so_far(table: str) -> int:
    return len(chunk_commits(table)) if open_table(table, {}) is not None else 0


def test_sigkilled_three_times_while_following_the_table_is_exact(tmp_path: Path, logger_cleanup: list[Logger]) -> None:
    table = str(tmp_path / "tables" / "measurements")
    args = arguments(tmp_path, follow_interval=0.5)
    logger = Logger(tmp_path, seconds=35)
    logger_cleanup.append(logger)
    services: list[Service] = []
    try:
        for kill in range(3):
            service = Service(tmp_path, f"service-{kill}", args, logger.path)
            services.append(service)
            before = _chunks_so_far(table)
            wait_for(lambda b=before: _chunks_so_far(table) > b + 1, f"two more chunks before kill {kill + 1}", 120)
            assert logger.process.poll() is None, "the kill comes while the run is written"
            service.kill()
        last = Service(tmp_path, "service-last", args, logger.path)
        services.append(last)
        truth = logger.truth()
        wait_for(lambda: "collected" in last.log.read_text(), "the run collected after the kills", 120)
    finally:
        for service in services:
            if service.process.poll() is None:
                service.stop()
    check_exact(table, truth)


def test_another_actor_continues_from_the_cursor_when_the_follower_is_killed(
    tmp_path: Path, postgres: PostgresTestServer, logger_cleanup: list[Logger]
) -> None:
    table = str(tmp_path / "tables" / "measurements")
    journal = postgres.database()
    logger = Logger(tmp_path)
    logger_cleanup.append(logger)
    common = arguments(tmp_path, follow_interval=0.5, journal=journal, lease_timeout=2.0)
    first = Service(tmp_path, "actor-a", {**common, "state_dir": str(tmp_path / "state-a")}, logger.path)
    second: Service | None = None
    try:
        wait_for(lambda: _chunks_so_far(table) >= 2, "actor A's first chunks", 120)
        second = Service(tmp_path, "actor-b", {**common, "state_dir": str(tmp_path / "state-b")}, logger.path)
        first.kill()
        killed_at = _chunks_so_far(table)
        truth = logger.truth()
        wait_for(lambda: "collected" in second.log.read_text(), "actor B collected the run", 120)  # type: ignore[union-attr]
    finally:
        for service in (first, second):
            if service is not None and service.process.poll() is None:
                service.stop()
    check_exact(table, truth)
    actors = [c["herocollector.actor"] for c in reversed(DeltaTable(table).history()) if "herocollector.chunk" in c]
    owner_b = ServiceConfig.from_arguments(**{**common, "state_dir": str(tmp_path / "state-b")}).owner
    assert owner_b not in actors[:2], "actor A followed the run first"
    assert set(actors[killed_at:]) == {owner_b}, "after the kill, actor B committed every chunk, numbering on"


def test_the_scan_journals_unfinished_runs_only_when_following(tmp_path: Path) -> None:
    from herocollector.testing.runs import build_run

    run = build_run(tmp_path / "runs" / "unfinished", 5, n_records=50)
    (run.path / "_DONE").unlink()
    for follow in (False, True):
        args = arguments(tmp_path, follow=follow, state_dir=str(tmp_path / f"state-{follow}"))
        if not follow:
            args.update(format="parquet", save_template="{{ output_root }}/{{ measure }}.parquet")
        with CollectionService(ServiceConfig.from_arguments(**args), on_collected=lambda r: None) as service:
            found = service.scan()
            assert (found.journalled == 1) is follow, found
