"""``herocollector remote ...`` against a real collector actor under BOSS, as an operator runs it.

One actor for the module, in a realm of its own, reached over loopback only: the actor listens
on a TCP port of 127.0.0.1 and every command connects to it, multicast scouting off
(``HEROS_ZENOH_CONFIG``). Each sub-command is run in a subprocess, in its human form and with
``--json``; a name nobody serves exits 1 saying how to check the realm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import BossProcess, load_config, wait_until
from herocollector.testing.servers import free_port

pytestmark = pytest.mark.e2e

LABELS = {"organisation": "acme", "model": "supply_chain", "experiment": "remote"}


def zenoh_config(*, listen: int | None = None, connect: int | None = None) -> str:
    """A Zenoh peer configuration on loopback only: listening on, or connecting to, one port."""
    config: dict[str, Any] = {"mode": "peer", "scouting": {"multicast": {"enabled": False}}}
    if listen is not None:
        config["listen"] = {"endpoints": [f"tcp/127.0.0.1:{listen}"]}
    if connect is not None:
        config["connect"] = {"endpoints": [f"tcp/127.0.0.1:{connect}"]}
    return json.dumps(config)


class Actor:
    """The collector actor under BOSS, listening on a loopback port, in a realm of its own."""

    def __init__(self, tmp: Path) -> None:
        self.realm = f"hc-cli-remote-{uuid.uuid4().hex[:12]}"
        self.port = free_port()
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.out = tmp / "out"
        arguments = {
            "default_metadata": {"output_root": str(self.out)},
            "allowed_roots": [str(self.runs)],
            "state_dir": str(tmp / "state"),
            "scan_interval": None,
            "max_retries": 0,
            "cleanup_grace": 3600.0,
        }
        env = {"HEROS_ZENOH_CONFIG": zenoh_config(listen=self.port)}
        self.boss = BossProcess(load_config("collector.json", arguments), self.realm, tmp / "boss", env).start()
        self.env = {**os.environ, "HEROS_ZENOH_CONFIG": zenoh_config(connect=self.port), "COLUMNS": "200"}
        try:
            status = self.remote("status", "--json", "--timeout", "90")
            assert status.returncode == 0, status.stderr + self.boss.log_text()[-3000:]
        except BaseException:
            self.boss.stop(timeout=10)
            raise

    def remote(self, method: str, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``herocollector remote METHOD ARGS --realm REALM`` in a subprocess."""
        return subprocess.run(
            [sys.executable, "-m", "herocollector", "remote", method, *map(str, args), "--realm", self.realm],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def answer(self, method: str, *args: str | Path) -> Any:
        """The actor's answer to ``remote METHOD ARGS --json``, which must exit 0."""
        result = self.remote(method, *args, "--json")
        assert result.returncode == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def job_state(self, path: Path) -> str | None:
        """The state of the job of ``path`` as ``remote status`` lists it, if it does."""
        for job in self.answer("status")["recent"]:
            if job["path"] == str(path):
                return str(job["state"])
        return None


@pytest.fixture(scope="module")
def actor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Actor]:
    a = Actor(tmp_path_factory.mktemp("cli-remote"))
    try:
        yield a
    finally:
        a.boss.stop(timeout=10)


def collected_run(actor: Actor, name: str) -> Path:
    """A run written into the actor's allowed root and collected through ``remote collect``."""
    run = Path(write_simulated_run(actor.runs / name, records=500, entities=2, seed=7, labels=LABELS)["path"])
    job = actor.answer("collect", run)
    assert job["path"] == str(run)
    wait_until(lambda: actor.job_state(run) == "done", 60, f"{name} collected")
    return run


def test_status_human_and_json(actor: Actor) -> None:
    human = actor.remote("status")
    assert human.returncode == 0, human.stderr
    assert "jobs: " in human.stdout and "pending" in human.stdout and "output_root: " in human.stdout
    status = actor.answer("status")
    assert set(status["counts"]) >= {"pending", "running", "done", "failed", "cleaned"}
    assert status["output_root"] == str(actor.out)


def test_collect_then_verify_cleanup_and_restore(actor: Actor) -> None:
    run = collected_run(actor, "run-ok")
    human = actor.remote("verify", run)
    assert human.returncode == 0, human.stderr
    assert f"{run}: ok" in human.stdout
    report = actor.answer("verify", run)
    assert report["ok"] is True and report["outputs"]
    segments = sorted(p.name for p in run.glob("*.seg.zst"))
    assert segments
    cleaned = actor.remote("cleanup", run)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"{run}: cleaned" in cleaned.stdout
    assert not list(run.glob("*.seg.zst"))
    restored = actor.answer("restore", run)
    assert restored is True
    assert sorted(p.name for p in run.glob("*.seg.zst")) == segments


def test_collect_human_output_names_the_job(actor: Actor) -> None:
    run = Path(write_simulated_run(actor.runs / "run-human", records=200, entities=1, seed=3, labels=LABELS)["path"])
    result = actor.remote("collect", run)
    assert result.returncode == 0, result.stderr
    assert str(run) in result.stdout and "state" in result.stdout


def test_failed_and_retry(actor: Actor) -> None:
    run = Path(write_simulated_run(actor.runs / "run-bad", records=300, entities=1, seed=5, labels=LABELS)["path"])
    [segment] = run.glob("*.seg.zst")
    segment.write_bytes(b"not zstd at all" * 10)
    actor.answer("collect", run)
    wait_until(lambda: actor.job_state(run) == "failed", 60, "the damaged run failed")
    failed = actor.answer("failed")
    [job] = [j for j in failed if j["path"] == str(run)]
    assert job["error"] and "seg.zst" in job["error"]
    human = actor.remote("failed")
    assert human.returncode == 0 and str(run) in human.stdout and "failed job(s)" in human.stdout
    shutil.rmtree(run)
    write_simulated_run(run, records=300, entities=1, seed=5, labels=LABELS)  # repaired
    retried = actor.remote("retry", run)
    assert retried.returncode == 0, retried.stderr
    assert "queued 1 failed job(s) again" in retried.stdout
    wait_until(lambda: actor.job_state(run) == "done", 60, "the repaired run collected")
    assert actor.answer("retry") == 0  # nothing failed any more


def test_a_refused_call_is_one_line_and_exit_1(actor: Actor) -> None:
    result = actor.remote("collect", "/" + "x" * 5000)  # longer than PATH_MAX: refused without a job
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("herocollector: error: the actor 'collector' refused collect"), line
    assert "4096" in line and len(line) < 2000


def test_verify_of_a_run_never_collected_exits_1(actor: Actor) -> None:
    run = actor.runs / "never"
    result = actor.remote("verify", run)
    assert result.returncode == 1, (result.stdout, result.stderr)


def test_an_actor_that_is_not_there_exits_1_saying_how_to_check(actor: Actor) -> None:
    result = actor.remote("status", "--name", "nobody-here", "--timeout", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert "'nobody-here'" in message and actor.realm in message
    assert "heros_zenoh_scout" in message and "HEROS_ZENOH_CONFIG" in message
    assert result.stdout == ""


def test_connect_raises_actor_not_found_naming_the_realm(actor: Actor) -> None:
    code = (
        "import herocollector, herocollector.errors as e\n"
        "try:\n"
        f"    herocollector.connect('nobody-here', realm={actor.realm!r}, timeout=1.5)\n"
        "except e.ActorNotFound as exc:\n"
        "    print('NOT-FOUND', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=actor.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("NOT-FOUND no HERO named 'nobody-here' answered in realm"), result.stdout
    assert actor.realm in result.stdout and "heros_zenoh_scout" in result.stdout


def test_connect_finds_the_actor(actor: Actor) -> None:
    code = (
        "import herocollector\n"
        f"with herocollector.connect(realm={actor.realm!r}, timeout=60) as collector:\n"
        "    print('COUNTS', sorted(collector.status()['counts']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=actor.env)
    assert result.returncode == 0, result.stderr
    assert "COUNTS [" in result.stdout and "'done'" in result.stdout


def test_work_the_actor_accepts_is_followed_to_its_result(actor: Actor) -> None:
    run = collected_run(actor, "run-unfinished-again")
    (run / "_DONE").unlink()  # the cleanup waits for it: longer than the actor's 3 s answer window
    followed = actor.remote("cleanup", run, "--done-timeout", "4000")
    assert followed.returncode == 1, (followed.stdout, followed.stderr)
    assert f"{run}: not cleaned" in followed.stdout and "accepted" not in followed.stdout
    assert list(run.glob("*.seg.zst")), "nothing may be cleaned without _DONE"
    at_once = actor.remote("cleanup", run, "--done-timeout", "4000", "--task-timeout", "0", "--json")
    assert at_once.returncode == 0, at_once.stderr
    accepted = json.loads(at_once.stdout)
    assert accepted["accepted"] is True and accepted["path"] == str(run)
    wait_until(
        lambda: any(t["id"] == accepted["id"] and t["state"] == "done" for t in actor.answer("status")["tasks"]),
        60,
        "the accepted cleanup finished",
    )
