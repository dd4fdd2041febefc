"""Following a run under BOSS: a logger writes for about a minute, the actor commits chunks every 2 s.

A logger process (the real ``DataLogger``) writes one run at a steady rate with rotation, so that
several segments are closed mid-run. The collector actor runs under BOSS with ``follow: true`` and
``follow_interval: 2``; the run is announced through the actor's remote ``collect`` as it begins.
A reader polls the table meanwhile: every record is in the table at most ``follow_interval`` + 3 s
after the logger wrote it, the actor's remote ``status()`` lists the run with its lag, and at the
end the table equals what was recorded, each chunk committed once.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from herocollector.actor.launcher import BossProcess, load_config, wait_until
from herocollector.testing.live import Freshness, LiveLogger
from herocollector.testing.tables import check_followed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
COLUMNS = ("experiment", "measure")
FOLLOW_INTERVAL = 2.0
SECONDS, RATE, MAX_NNZ = 60.0, 3000.0, 128  # about 1 MB/s of segments, a segment closed every few seconds


def test_the_actor_follows_a_minute_long_run_under_boss(tmp_path: Path) -> None:
    realm = f"hc-follow-{uuid.uuid4().hex[:10]}"
    table = str(tmp_path / "tables" / "measurements")
    arguments = {
        "save_template": "{{ output_root }}/measurements",
        "default_metadata": {"output_root": str(tmp_path / "tables")},
        "format": "delta",
        "follow": True,
        "follow_interval": FOLLOW_INTERVAL,
        "rule": None,
        "columns": list(COLUMNS),
        "compression": None,
        "allowed_roots": [str(tmp_path / "runs")],
        "state_dir": str(tmp_path / "state"),
        "scan_interval": None,
        "compact_interval": None,
        "timeout": None,
    }
    collector = BossProcess(load_config("collector.json", arguments), realm, tmp_path / "boss").start()
    logger: LiveLogger | None = None
    try:
        actor = collector.remote(90)
        logger = LiveLogger(tmp_path, seconds=SECONDS, rate=RATE, max_nnz=MAX_NNZ, rotate_bytes=8 << 20)
        actor.collect(str(logger.path))
        freshness = Freshness()
        lags: list[float] = []
        while logger.process.poll() is None:
            freshness.poll(table)
            lags.extend(run["lag"] for run in actor.status()["following"] if run["lag"] is not None)
            time.sleep(0.25)  # the reader's polling period: it bounds the error of the measured freshness
        truth = logger.truth()
        wait_until(lambda: actor.status()["counts"]["done"] == 1, 120, "the run collected at _DONE")
    finally:
        if logger is not None:
            logger.stop()
        collector.stop(timeout=15)
    check_followed(table, truth.run, COLUMNS)
    assert lags, "the actor's status() listed the run being followed, with its lag"
    latencies = freshness.latencies(truth)
    assert len(latencies) > 0.9 * len(truth.run), "the records were seen while the run was written"
    assert max(latencies) <= FOLLOW_INTERVAL + 3, f"max {max(latencies):.2f} s"
    segments = sorted(truth.run.path.glob("*.seg.zst"))
    assert len(segments) >= 3, "segments were closed mid-run"
