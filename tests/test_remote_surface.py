"""The remote surface checks its arguments: over Zenoh, from a real BOSS actor.

Every bad argument is refused with a clear error and creates no job; booleans must be
booleans; remote cleanup and restore can be switched off; errors reach the caller with their
message but without the installation's tracebacks and paths. A failed start-up keeps nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.launcher import BossProcess, load_config
from herocollector.errors import JournalError, StateDirError
from herocollector.testing.runs import journal_rows

pytestmark = pytest.mark.e2e


class Actor:
    """One collector actor under BOSS, in a realm of its own."""

    def __init__(self, tmp: Path, **arguments: Any) -> None:
        self.realm = f"hc-remote-{uuid.uuid4().hex[:12]}"
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.state = tmp / "state"
        args = {
            "default_metadata": {"output_root": str(tmp / "out")},
            "allowed_roots": [str(self.runs)],
            "state_dir": str(self.state),
            "scan_interval": None,
            **arguments,
        }
        self.boss = BossProcess(load_config("collector.json", args), self.realm, tmp / "boss").start()
        self.remote = self.boss.remote(timeout=90)

    def jobs(self) -> int:
        return len(journal_rows(self.state))

    def stop(self) -> None:
        self.boss.stop(timeout=10)


@pytest.fixture(scope="module")
def actor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Actor]:
    a = Actor(tmp_path_factory.mktemp("remote"))
    try:
        yield a
    finally:
        a.stop()


BAD_PATHS = [
    pytest.param(None, "absolute path", id="None"),
    pytest.param(123, "absolute path", id="int"),
    pytest.param("", "empty", id="empty"),
    pytest.param("relative/run", "absolute path", id="relative"),
    pytest.param("/runs/with\0nul", "NUL", id="nul"),
    pytest.param("/" + "x" * 10_000_000, "4096", id="10MB"),
]


@pytest.mark.parametrize(("path", "message"), BAD_PATHS)
def test_collect_refuses_bad_paths_without_a_job(actor: Actor, path: Any, message: str) -> None:
    with pytest.raises(Exception) as raised:
        actor.remote.collect(path)
    text = str(raised.value)
    assert message in text
    assert "ConfigError" in text
    assert "remote traceback" not in text, "the installation's traceback reached the caller"
    assert len(text) < 2_000, "the refused value was echoed back"
    assert actor.jobs() == 0


@pytest.mark.parametrize(("path", "message"), [p for p in BAD_PATHS if p.id != "relative"])
def test_retry_and_restore_refuse_bad_paths(actor: Actor, path: Any, message: str) -> None:
    if path is not None:  # retry(None) means every failed job
        with pytest.raises(Exception, match=message.replace("\0", "")):
            actor.remote.retry(path)
    with pytest.raises(Exception, match=message.replace("\0", "")):
        actor.remote.restore(path)
    assert actor.jobs() == 0


@pytest.mark.parametrize("name", ["keep_meta", "wait_for_done", "force"])
@pytest.mark.parametrize("value", ["no", 0, 1, None])
def test_cleanup_flags_must_be_booleans(actor: Actor, name: str, value: Any) -> None:
    with pytest.raises(Exception, match=f"{name} must be true or false"):
        actor.remote.cleanup(str(actor.runs / "run-1"), **{name: value})
    assert actor.jobs() == 0


@pytest.mark.parametrize("value", [-1, "5", 1.5, True])
def test_cleanup_timeout_must_be_milliseconds(actor: Actor, value: Any) -> None:
    with pytest.raises(Exception, match="timeout must be a whole number of milliseconds"):
        actor.remote.cleanup(str(actor.runs / "run-1"), timeout=value)


def test_remote_cleanup_can_be_switched_off(tmp_path: Path) -> None:
    closed = Actor(tmp_path, remote_cleanup=False)
    try:
        with pytest.raises(Exception, match="remote cleanup is switched off"):
            closed.remote.cleanup()
        with pytest.raises(Exception, match="remote restore is switched off"):
            closed.remote.restore(str(closed.runs / "run-1"))
        assert closed.remote.status()["counts"]["done"] == 0  # the rest of the surface works
    finally:
        closed.stop()


def test_a_start_on_a_full_state_dir_names_the_file_and_keeps_nothing(tmp_path: Path) -> None:
    from herocollector import CollectionService, ServiceConfig

    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], check=True)
    try:
        filler = state / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # the disk is full
        finally:
            os.close(fd)
        config = ServiceConfig.from_arguments(
            save_template="{{ measure }}.arrow", output_root=str(tmp_path / "out"), state_dir=str(state)
        )
        before = set(os.listdir(f"/proc/{os.getpid()}/fd"))
        with pytest.raises((StateDirError, JournalError)) as raised:
            CollectionService(config)
        message = str(raised.value)
        assert str(state) in message and ("No space left" in message or "disk is full" in message), message
        assert set(os.listdir(f"/proc/{os.getpid()}/fd")) <= before, "a descriptor was kept"
        filler.unlink()
        with CollectionService(config) as service:  # the same process can start again at once
            assert service.counts().busy == 0
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"object_selector": "lab-logger-*"}, "object_selector 'lab-logger-*'"),
        ({"object_selector": "a//b"}, "object_selector 'a//b'"),
        ({"event_name": "fin*shed"}, "event_name 'fin*shed'"),
    ],
)
def test_a_selector_zenoh_refuses_is_a_configuration_error_at_start(
    env: Any, arguments: dict[str, str], named: str
) -> None:
    from herocollector.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a Zenoh key expression") as raised:
        env.actor(**arguments)
    assert named in str(raised.value)
    if "*" in named:
        assert "$*" in str(raised.value)
    assert env.actor().service.counts().busy == 0  # the refused actor kept no lock on the state_dir


def test_zenoh_in_the_suite_listens_and_connects_on_loopback_only(actor: Actor) -> None:
    import psutil

    assert actor.remote.status()["counts"] is not None  # the actor is up and answered over Zenoh
    assert actor.boss.process is not None
    boss = psutil.Process(actor.boss.process.pid)
    sockets = [c for p in [boss, *boss.children(recursive=True)] for c in p.net_connections(kind="inet")]
    assert sockets, "the actor has no Zenoh socket at all"
    for connection in sockets:
        assert connection.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1"), connection
        if connection.raddr:
            assert connection.raddr.ip in ("127.0.0.1", "::ffff:127.0.0.1"), connection
    assert not any(c.type == socket.SOCK_DGRAM and c.laddr.port == 7446 for c in sockets), "multicast scouting is on"
