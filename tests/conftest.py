"""Fixtures of the test suite; the helpers themselves live in :mod:`herocollector.testing`."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    """A real S3-compatible server (moto_server) on 127.0.0.1 for the whole session."""
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
