"""End-to-end: the service as a HERO under BOSS, with real Zenoh, real processes and real signals.

Waiting runs next to finished ones, downtime with events into the void, a prompt shutdown,
the remote surface, events received in another process, an orphaned BOSS worker, and a
remote cleanup that answers before the query times out.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import BossProcess, load_config, wait_until
from herocollector.testing.actors import tracebacks
from herocollector.testing.runs import journal_rows

pytestmark = pytest.mark.e2e

REMOTE_METHODS = {"collect", "status", "failed", "retry", "cleanup", "restore", "verify"}
EVENTS = {"run_collected", "run_failed", "run_progress"}
HEROS_EVENT_PLUMBING = {"_connect_local_hero_callback", "_disconnect_local_hero_callback", "_get_local_hero_callbacks"}


class Site:
    """A collector under BOSS and an announcing logger HERO under BOSS, in one realm."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.realm = f"hc-svc-{uuid.uuid4().hex[:12]}"
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.out = tmp / "out"
        self.state = tmp / "state"
        self.work = tmp / "boss"
        self.processes: list[BossProcess] = []
        self._seed = 0

    def collector(self, **arguments: Any) -> BossProcess:
        config = load_config(
            "collector.json",
            {
                "default_metadata": {"output_root": str(self.out)},
                "allowed_roots": [str(self.runs)],
                "state_dir": str(self.state),
                "retry_delay": 0.1,
                "backoff": 50,
                **arguments,
            },
        )
        return self._start(config)

    def logger(self) -> BossProcess:
        return self._start(load_config("demo_logger.json", {"root": str(self.runs)}))

    def _start(self, config: dict[str, Any]) -> BossProcess:
        process = BossProcess(config, self.realm, self.work).start()
        self.processes.append(process)
        return process

    def run(self, name: str, done: bool = True, records: int = 600) -> Path:
        self._seed += 1
        path = self.runs / name
        write_simulated_run(path, records=records, entities=1, seed=self._seed)
        if not done:
            (path / "_DONE").unlink()
        return path

    def jobs(self) -> dict[str, Any]:
        return {row["path"]: row for row in journal_rows(self.state)}

    def stop(self) -> None:
        threads = [threading.Thread(target=p.stop, kwargs={"timeout": 10}) for p in self.processes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def state_of(site: Site, path: Path) -> str | None:
    row = site.jobs().get(str(path))
    return None if row is None else row["state"]


def terminate_and_time(process: BossProcess, limit: float = 20.0) -> float:
    """SIGTERM the BOSS process group; seconds until it exited by itself."""
    assert process.process is not None
    started = time.monotonic()
    os.killpg(process.process.pid, signal.SIGTERM)
    process.process.wait(timeout=limit)
    return time.monotonic() - started


def test_a_waiting_run_holds_no_worker_and_shutdown_is_prompt(site: Site) -> None:
    collector = site.collector(workers=1, timeout=None)
    logger = site.logger()
    remote_logger = logger.remote()
    collector.remote()
    a = site.run("run-a", done=False)
    b, c = site.run("run-b"), site.run("run-c")
    remote_logger.announce({"path": str(a)})
    wait_until(lambda: state_of(site, a) == "waiting", 30, "run A to wait for its _DONE")
    announced = time.monotonic()
    remote_logger.announce({"path": str(b)})
    remote_logger.announce({"path": str(c)})
    wait_until(lambda: state_of(site, b) == state_of(site, c) == "done", 30, "runs B and C")
    assert time.monotonic() - announced < 2.0
    assert state_of(site, a) == "waiting"

    (a / "_DONE").touch()
    wait_until(lambda: state_of(site, a) == "done", 30, "run A once its _DONE exists")

    late = site.run("run-d", done=False)
    remote_logger.announce({"path": str(late)})
    wait_until(lambda: state_of(site, late) == "waiting", 30, "run D to wait")
    seconds = terminate_and_time(collector)
    assert seconds < 10.0, f"BOSS took {seconds:.1f} s to stop"
    assert tracebacks(collector.log_text()) == []


def test_runs_finished_during_downtime_are_collected_without_a_manual_call(site: Site) -> None:
    collector = site.collector()
    collector.remote()
    logger = site.logger().remote()
    before = site.run("before")
    logger.announce({"path": str(before)})
    wait_until(lambda: state_of(site, before) == "done", 30, "the run collected before the downtime")
    collector.stop()
    first_update = site.jobs()[str(before)]["updated"]

    missed = [site.run(f"missed-{i}") for i in range(3)]
    for run in missed:
        logger.announce({"path": str(run)})  # nobody listens
    restarted = site.collector()
    restarted.remote()
    wait_until(lambda: all(state_of(site, r) == "done" for r in missed), 60, "the runs missed during downtime")
    jobs = site.jobs()
    assert {jobs[str(r)]["source"] for r in missed} == {"scan"}
    assert jobs[str(before)]["updated"] == first_update and jobs[str(before)]["attempts"] == 1
    assert len(jobs) == 4


def test_the_remote_surface_is_deliberate(site: Site) -> None:
    remote = site.collector().remote()
    names = {cap.name for cap in remote._remote_capabilities}
    public = {name for name in names if not name.startswith("_")}
    assert public == REMOTE_METHODS | EVENTS, sorted(names)
    assert names - public == HEROS_EVENT_PLUMBING  # what every LocalHERO offers for remote event callbacks
    for inherited in ("feed", "register_callback", "remove_callback", "remove_callback_uid", "is_queue_drained"):
        assert inherited not in names


def test_events_reach_a_hero_in_another_process(site: Site) -> None:
    collector = site.collector(max_retries=0)
    remote = collector.remote()
    logger = site.logger().remote()
    collected: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    remote.run_collected.connect(collected.append)
    remote.run_failed.connect(failed.append)
    good = site.run("good")
    bad = site.run("bad")
    for segment in bad.glob("*.seg.zst"):
        segment.write_bytes(b"\xff" * 64)
    logger.announce({"path": str(good)})
    logger.announce({"path": str(bad)})
    wait_until(lambda: collected and failed, 30, "both events")
    [report] = collected
    assert report["path"] == str(good) and report["rows"] == 600 and sum(report["outputs"].values()) == 600
    assert report["job"] >= 1 and report["seconds"] > 0
    [failure] = failed
    assert failure["path"] == str(bad) and failure["final"] is True and failure["attempts"] == 1
    assert "SegmentError" in failure["error"]


def test_an_orphaned_boss_worker_stops_and_frees_the_state_dir(site: Site) -> None:
    collector = site.collector()
    collector.remote()
    assert collector.process is not None
    children = [
        int(p) for p in Path(f"/proc/{collector.process.pid}/task/{collector.process.pid}/children").read_text().split()
    ]
    assert children, "BOSS runs the HERO in a worker process"
    os.kill(collector.process.pid, signal.SIGKILL)  # only the BOSS main process: its worker is orphaned
    collector.process.wait()

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in children)

    wait_until(gone, 20, "the orphaned worker to stop")
    replacement = site.collector()
    replacement.remote()
    assert "already uses this state_dir" not in replacement.log_text()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_a_second_actor_on_the_same_state_dir_does_not_start(site: Site) -> None:
    site.collector().remote()
    second = load_config(
        "collector.json",
        {
            "default_metadata": {"output_root": str(site.out)},
            "allowed_roots": [str(site.runs)],
            "state_dir": str(site.state),
        },
    )
    second["_id"] = "collector-2"
    process = site._start(second)
    wait_until(lambda: "already uses this state_dir" in process.log_text(), 30, "the refusal in the BOSS log")
    assert "pid" in process.log_text()
    with pytest.raises(TimeoutError):
        process.remote(timeout=3)


def test_remote_cleanup_answers_before_the_query_times_out(site: Site) -> None:
    remote = site.collector().remote()
    logger = site.logger().remote()
    run = site.run("unfinished", done=False)
    logger.announce({"path": str(run)})
    wait_until(lambda: state_of(site, run) == "waiting", 30, "the run to wait")
    started = time.monotonic()
    assert remote.cleanup(str(run), force=True, timeout=None) is False  # no _DONE: refused, truthfully
    assert time.monotonic() - started < 9.5
    assert list(run.glob("*.seg.zst"))  # nothing was deleted, now or later
    (run / "_DONE").touch()
    wait_until(lambda: state_of(site, run) == "done", 30, "the run")
    assert remote.cleanup(str(run)) is True
    assert not list(run.glob("*.seg.zst"))


def test_metrics_are_published_through_the_boss_datasource(site: Site) -> None:
    config = load_config(
        "collector.json",
        {
            "default_metadata": {"output_root": str(site.out)},
            "allowed_roots": [str(site.runs)],
            "state_dir": str(site.state),
        },
    )
    config["datasource"] = {"async": False, "interval": 0.2}
    remote = site._start(config).remote()
    site.run("r")
    received: list[Any] = []
    remote.observable_data.connect(received.append)
    remote.collect(str(site.runs / "r"))

    def collected_metric() -> dict[str, Any] | None:
        for sample in reversed(received):
            values = {item["id"]: item for item in sample}
            if values.get("runs_collected", {}).get("raw_value") == 1:
                return values
        return None

    values = wait_until(collected_metric, 30, "a datasource sample after the run")
    assert values["rows_collected"]["raw_value"] == 600
    assert values["jobs_done"]["raw_value"] == 1 and values["queue_depth"]["raw_value"] == 0
    assert values["bytes_collected"]["raw_unit"] == "B"


BOSS_EXIT_LOG = """\
2026-12-01 17:47:50,101 [INFO] boss [starter.py:111 exit_gracefully]: Stopping BOSS...
Process Process-1:
Traceback (most recent call last):
  File "/usr/lib/python3.11/multiprocessing/process.py", line 314, in _bootstrap
    self.run()
  File "/venv/lib/python3.11/site-packages/boss/worker.py", line 70, in run
    self._loop.run_until_complete(self._communicatation_task)
  File "/usr/lib/python3.11/asyncio/base_events.py", line 651, in run_until_complete
    raise RuntimeError('Event loop stopped before Future completed.')
RuntimeError: Event loop stopped before Future completed.
2026-12-01 17:47:50,565 [INFO] boss [starter.py:122 exit_gracefully]: Exited BOSS
"""

OUR_TRACEBACK = """\
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/herocollector/actor/archiver.py", line 1, in _teardown
    raise ValueError("boom")
ValueError: boom
"""


def test_tracebacks_reports_ours_and_leaves_out_only_the_boss_worker_exit_race() -> None:
    assert tracebacks(BOSS_EXIT_LOG) == []
    found = tracebacks(BOSS_EXIT_LOG + OUR_TRACEBACK)
    assert len(found) == 1 and found[0].endswith("ValueError: boom")
    # The same RuntimeError raised from anywhere but BOSS's worker is reported.
    assert len(tracebacks(BOSS_EXIT_LOG.replace("boss/worker.py", "herocollector/actor/archiver.py"))) == 1
