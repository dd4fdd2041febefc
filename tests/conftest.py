"""Fixtures of the test suite; the helpers themselves live in :mod:`herocollector.testing`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from herocollector.testing.runs import RecordedRun, build_run

if TYPE_CHECKING:
    from herocollector.testing.actors import Env


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
