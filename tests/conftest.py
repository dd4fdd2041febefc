"""Fixtures of the test suite; the helpers themselves live in :mod:`herocollector.testing`."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from herocollector.actor.loopback import ENV, LoopbackHub
from herocollector.testing.runs import RecordedRun, build_run
from herocollector.testing.servers import PostgresTestServer, S3TestServer

if TYPE_CHECKING:
    from herocollector.testing.actors import Env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the long modules first: those with a ``slow`` test, then those with an ``e2e`` one, then the rest.

    With ``-n 2`` (pytest-xdist, as ``python3 run.py test`` runs the suite) the workers take the
    tests in this order, so the longest ones start at once and the short ones fill in around
    them instead of one long test finishing alone at the end. A module's tests stay together
    (its slow ones first): splitting a module would set its module-scoped fixtures up twice.
    """

    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("e2e") else 2

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    module_rank: dict[str, int] = {}
    for item in items:
        module_rank[module(item)] = min(module_rank.get(module(item), 2), rank(item))
    position = {name: index for index, name in enumerate(module_rank)}
    items.sort(key=lambda item: (module_rank[module(item)], position[module(item)], rank(item)))


@pytest.fixture(scope="session", autouse=True)
def loopback_zenoh() -> Iterator[None]:
    """Every Zenoh session of the suite, in this process and in BOSS subprocesses, on 127.0.0.1 only.

    A developer's own ``HEROS_ZENOH_CONFIG`` is left as it is.
    """
    if os.environ.get(ENV):
        yield
        return
    with LoopbackHub() as hub:
        os.environ[ENV] = hub.peer_config()
        try:
            yield
        finally:
            del os.environ[ENV]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresTestServer]:
    """A real PostgreSQL server for the whole session (Unix socket only); fails if it cannot start.

    It does not fsync: its data is thrown away at the end, and what a test can do to it (stop,
    kill) loses nothing that reached the kernel. Syncing made each of the many databases the
    suite creates, and the final shutdown checkpoint, cost seconds on a busy disk.
    """
    import psycopg

    with PostgresTestServer() as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET full_page_writes = off")
            conn.execute("SELECT pg_reload_conf()")
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3TestServer]:
    """A real S3-compatible server (moto, its conditional writes atomic: testing.s3server) on 127.0.0.1, per session."""
    with S3TestServer() as server:
        yield server


@pytest.fixture
def run(tmp_path: Path) -> RecordedRun:
    """A single-segment run of 4 streams and 300 records, written by the real logger."""
    return build_run(tmp_path / "run", seed=1)


@pytest.fixture
def rotated_run(tmp_path: Path) -> RecordedRun:
    """A run rotated into at least 10 segment files, written by the real logger."""
    recorded = build_run(tmp_path / "rotated", seed=2, n_records=900, rotate_bytes=1500)
    assert len(recorded.segments) >= 10
    return recorded


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """An :class:`herocollector.testing.actors.Env` (in-process actors on Zenoh) for the test, closed at its end."""
    from herocollector.testing.actors import Env  # imports HEROS and Zenoh: only for the tests that use it

    environment = Env(tmp_path)
    try:
        yield environment
    finally:
        environment.close()


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built_once(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Callable[[str, Callable[[Path], None]], Path]:
    """``built_once(name, build)``: a folder that ``build`` fills once per test session, for every xdist worker.

    The workers of one session share the parent of their temporary folders. The first to ask
    builds there under a lock; the others wait for it and take the result. A build that failed
    leaves no result behind, so the next to ask builds again, and fails as loudly. Without
    xdist, the folder is the session's own.
    """

    def build_once(name: str, build: Callable[[Path], None]) -> Path:
        if worker_id == "master":
            folder = tmp_path_factory.mktemp(name)
            build(folder)
            return folder
        shared = tmp_path_factory.getbasetemp().parent
        folder, finished = shared / name, shared / f"{name}.built"
        with open(shared / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the worker dies
            if not finished.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                finished.touch()
        return folder

    return build_once


@pytest.fixture(scope="session")
def core_wheel(built_once: Callable[[str, Callable[[Path], None]], Path]) -> Path:
    """The wheel of this working tree, as ``pip wheel`` builds it (no dependencies), once per session."""

    def build(folder: Path) -> None:
        source = folder / "source"  # a copy: an in-tree build would leave build/ and *.egg-info in the checkout
        # No __pycache__: the compiled kernels cached there must not ship, as they do not from a clean checkout.
        ignored = shutil.ignore_patterns(".venv", ".git", "build", "_data", "*.egg-info", "__pycache__")
        shutil.copytree(ROOT, source, symlinks=True, ignore=ignored)
        # A path, not a bare name: pip would take "source" for a project on the index.
        command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps"]
        command += ["--no-build-isolation", "-q", "-w", str(folder / "wheels"), str(source)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.fail(f"the wheel failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
        shutil.rmtree(source)

    [wheel] = (built_once("core-wheel", build) / "wheels").glob("herocollector-*.whl")
    return wheel
