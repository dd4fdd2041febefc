"""Connect to a running collector actor (:func:`connect`); start and stop BOSS processes (the demo, the tests).

:func:`connect` is the public way in, re-exported as ``herocollector.connect``: a single
``RemoteHERO(name, realm=...)`` gives up after one discovery round (a fraction of a second),
which a HERO whose liveliness has not reached this process yet loses often; ``connect`` retries
until its timeout and then names the realm and how to look into it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from heros import RemoteHERO

from herocollector.errors import ActorNotFound

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "boss_configs"


def load_config(name: str, arguments: dict[str, Any] | None = None, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """A BOSS config from ``boss_configs/``, with some arguments overridden.

    Args:
        name: File name, e.g. ``"collector.json"``.
        arguments: Arguments to replace (shallow).
        config_dir: Folder of the configs.

    Returns:
        The config dict.
    """
    config: dict[str, Any] = json.loads((config_dir / name).read_text(encoding="utf-8"))
    config["arguments"].update(arguments or {})
    return config


class BossProcess:
    """One ``python -m boss.starter`` subprocess in its own process group.

    Args:
        config: The BOSS JSON config (``_id``, ``classname``, ``arguments``).
        realm: HEROS realm (tests use one per test so runs never see each other).
        workdir: Where the config file and the log are written.
        env: Extra environment variables.
    """

    def __init__(self, config: dict[str, Any], realm: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.realm = realm
        self.name = config["_id"]
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / f"{self.name}.boss.json"
        self.log_file = workdir / f"{self.name}.log"
        self._env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self._proxies: list[RemoteHERO] = []

    def start(self) -> BossProcess:
        """Write the config and start BOSS."""
        self.config_file.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        log = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "boss.starter", "-u", self.config_file.resolve().as_uri(), "--realm", self.realm],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        """Whether the BOSS main process is running."""
        return self.process is not None and self.process.poll() is None

    def _close_proxies(self) -> None:
        # An open RemoteHERO to a HERO that goes away makes Zenoh wait for it at shutdown.
        for proxy in self._proxies:
            try:
                proxy._destroy_hero()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._proxies.clear()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash)."""
        self._close_proxies()
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``timeout`` s."""
        self._close_proxies()
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def remote(self, timeout: float = 30.0) -> RemoteHERO:
        """The HERO this BOSS serves, once it answers (closed again by :meth:`stop`)."""
        proxy = wait_for_hero(self.name, self.realm, timeout, self)
        self._proxies.append(proxy)
        return proxy

    def log_text(self) -> str:
        """What the process printed so far."""
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> BossProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DEFAULT_NAME = "collector"
"""The ``_id`` of the shipped BOSS config (``boss_configs/collector.json``)."""
DEFAULT_REALM = "heros"
"""The realm BOSS and HEROS use when none is given."""


def not_found_hint(name: str, realm: str) -> str:
    """How to check why the HERO ``name`` is not found in ``realm`` (said by :func:`connect` and the CLI)."""
    scope = os.environ.get("HEROS_ZENOH_CONFIG")
    where = "the Zenoh configuration in HEROS_ZENOH_CONFIG" if scope else "Zenoh's default (multicast scouting)"
    return (
        f"check that its BOSS runs with '--realm {realm}' and an _id of {name!r}, and that this machine reaches it "
        f"through {where}: 'heros_zenoh_scout --duration 5' lists the HEROS peers it can see"
    )


def connect(name: str = DEFAULT_NAME, realm: str = DEFAULT_REALM, timeout: float = 30.0) -> RemoteHERO:
    """A proxy of the running HERO ``name`` in ``realm`` (the collector actor, by default), once it answers.

    Discovery is retried until ``timeout``: one round of it lasts a fraction of a second, and a
    HERO that has just started, or whose peers are still being found, misses it often. Zenoh is
    configured by the environment (``HEROS_ZENOH_CONFIG``), as for every HEROS process.

    Use the proxy as a context manager (or call ``_destroy_hero()``) so its Zenoh session is
    closed before the actor stops::

        import herocollector

        with herocollector.connect(realm="heros") as collector:
            collector.status()

    Args:
        name: The HERO's name (the BOSS config's ``_id``).
        realm: The HEROS realm its BOSS was started in (``--realm``).
        timeout: Seconds to keep trying.

    Returns:
        The connected ``heros.RemoteHERO``.

    Raises:
        ActorNotFound: No HERO of that name answered in time; the message says how to check.
    """
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        proxy = _proxy(name, realm)
        if proxy is not None:
            return proxy
        left = deadline - time.monotonic()
        if left <= 0:
            raise ActorNotFound(
                f"no HERO named {name!r} answered in realm {realm!r} within {timeout:g} s; "
                + not_found_hint(name, realm)
            )
        time.sleep(min(pause, left))  # a HERO cannot be waited on: poll, backing off up to 0.5 s
        pause = min(pause * 2, 0.5)


def _proxy(name: str, realm: str) -> RemoteHERO | None:
    """A proxy of the HERO with its methods, or None if it did not answer in full (try again)."""
    try:
        proxy = RemoteHERO(name, realm=realm)
    except NameError:  # HEROS' "not found or discovery timeout"
        return None
    if not proxy._remote_capabilities:  # heros hands out a proxy without methods when that query timed out
        proxy._destroy_hero()
        return None
    return proxy


def wait_for_hero(name: str, realm: str, timeout: float = 30.0, process: BossProcess | None = None) -> RemoteHERO:
    """Connect to a remote HERO, retrying while it is not yet discoverable.

    Raises:
        TimeoutError: It did not appear in time (or its BOSS process exited).
    """

    def connect() -> RemoteHERO | None:
        if process is not None and not process.alive():
            raise TimeoutError(f"BOSS for {name} exited:\n{process.log_text()[-4000:]}")
        return _proxy(name, realm)

    return wait_until(connect, timeout, f"HERO {name!r} in realm {realm!r}")


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something truthy; that value is returned.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
