r"""A fleet of collector actors under BOSS that share one PostgreSQL journal and one bucket.

Used by the fleet tests and ``benchmarks/fleet_bench.py``: :class:`Fleet` starts a demo logger
HERO and ``n`` collector actors (separate BOSS processes, separate ``state_dir``\\ s) in one
realm, and reads the shared journal straight from PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import BossProcess, load_config

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"


class Fleet:
    """Collectors sharing a journal (``journal_url``) and a bucket (``bucket`` on ``s3``).

    Args:
        tmp: A folder for the runs, the state folders and the BOSS logs.
        journal_url: The PostgreSQL journal.
        bucket: The bucket the outputs go to (under ``c/``).
        storage_options: Reach the object store.
        arguments: More collector arguments (``lease_timeout``, ``chunk_bytes`` ...).
    """

    def __init__(
        self, tmp: Path, journal_url: str, bucket: str, storage_options: dict[str, Any], **arguments: Any
    ) -> None:
        self.tmp = tmp
        self.realm = f"hc-fleet-{uuid.uuid4().hex[:10]}"
        self.runs = tmp / "runs"
        self.runs.mkdir(exist_ok=True)
        self.journal_url = journal_url
        self.bucket = bucket
        self.storage_options = storage_options
        self.arguments = arguments
        self.collectors: list[BossProcess] = []
        self.logger: BossProcess | None = None
        self._reader: psycopg.Connection[dict[str, Any]] | None = None

    def write_runs(self, count: int, records: int = 1500) -> list[str]:
        """Finished runs in ``runs/``."""
        return [
            write_simulated_run(self.runs / f"run-{i:03d}", records=records, seed=i, labels={"run": i})["path"]
            for i in range(count)
        ]

    def state_dir(self, index: int) -> Path:
        """The ``state_dir`` of collector ``index``."""
        return self.tmp / f"state-{index}"

    def owner(self, index: int) -> str:
        """The lease owner name of collector ``index``."""
        return f"{socket.gethostname()}:{self.state_dir(index)}"

    def start(self, collectors: int) -> None:
        """Start the logger and ``collectors`` actors; wait until all answer."""
        logger_config = load_config("demo_logger.json", {"root": str(self.runs)})
        self.logger = BossProcess(logger_config, self.realm, self.tmp / "boss").start()
        for index in range(collectors):
            config = load_config(
                "collector.json",
                {
                    "save_template": TEMPLATE,
                    "default_metadata": {"output_root": f"s3://{self.bucket}/c"},
                    "storage_options": self.storage_options,
                    "journal": self.journal_url,
                    "allowed_roots": [str(self.runs)],
                    "state_dir": str(self.state_dir(index)),
                    "retry_delay": 0.1,
                    "scan_interval": None,
                    **self.arguments,
                },
            )
            config["_id"] = f"collector-{index}"
            self.collectors.append(BossProcess(config, self.realm, self.tmp / "boss").start())
        for process in [self.logger, *self.collectors]:
            process.remote(90)  # several BOSS processes start at once on a small machine

    def announce(self, paths: list[str]) -> None:
        """Fire ``finished`` for every path (every actor hears every event)."""
        assert self.logger is not None
        self.logger.remote().announce_all(paths)

    def jobs(self) -> list[dict[str, Any]]:
        """The shared journal's jobs, read on a connection kept open.

        The tests poll this several times a second for minutes; a new connection each time made
        PostgreSQL start a backend process for every poll (4.6 ms of the machine's CPU, against
        0.15 ms for a query on an open connection). A connection broken by a server restart
        is replaced once.
        """
        try:
            return self._read_jobs()
        except psycopg.OperationalError:
            self._close_reader()
            return self._read_jobs()

    def _read_jobs(self) -> list[dict[str, Any]]:
        if self._reader is None:
            self._reader = psycopg.connect(self.journal_url, row_factory=dict_row, autocommit=True)
        return self._reader.execute("SELECT * FROM herocollector_jobs ORDER BY id").fetchall()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def done(self) -> set[str]:
        """Paths of the jobs that are done."""
        return {job["path"] for job in self.jobs() if job["state"] == "done"}

    def signal(self, index: int, signum: int) -> None:
        """Send a signal to collector ``index``'s whole process group (SIGKILL, SIGSTOP, SIGCONT)."""
        process = self.collectors[index].process
        assert process is not None
        os.killpg(process.pid, signum)
        if signum == signal.SIGKILL:
            process.wait()

    def stop(self) -> None:
        """Stop every process (a stopped one is continued first, so it can shut down)."""
        for process in self.collectors:
            if process.alive() and process.process is not None:
                try:
                    os.killpg(process.process.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        everyone = [p for p in [self.logger, *self.collectors] if p is not None]
        threads = [threading.Thread(target=p.stop, kwargs={"timeout": 10}) for p in everyone]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._close_reader()
