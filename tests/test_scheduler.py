"""The scheduler's periodic tasks while the journal is down: rounds further apart, and at once when it is back.

A ``_DONE`` check every 100 ms used to ask a journal that was down ten times a second for as
long as the outage lasted. The waits are recorded (their lengths, and whether a trigger or the
timeout ended them), so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from herocollector.errors import JournalError
from herocollector.journal.sqlite import SqliteJournal
from herocollector.service import scheduler as scheduling
from herocollector.service.health import JournalHealth
from herocollector.service.scheduler import OUTAGE_PAUSE, Scheduler, outage_pause
from herocollector.testing.actors import wait_for


class RecordingEvent(threading.Event):
    """An event that records every wait on it: its timeout, and whether it was set (not timed out)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []
        self.woken: list[bool] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        woken = super().wait(timeout)
        self.woken.append(woken)
        return woken


def test_outage_pause_doubles_from_the_interval_up_to_the_cap() -> None:
    assert outage_pause(0.1, 0) == 0.1
    assert [outage_pause(0.1, n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    assert outage_pause(0.1, 10_000) == OUTAGE_PAUSE
    assert outage_pause(60.0, 3) == 60.0  # a task with a long interval never runs more often


def test_a_failing_periodic_task_backs_off_and_resumes_when_the_journal_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 0.5
    monkeypatch.setattr(scheduling, "OUTAGE_PAUSE", cap)  # the doubling reaches it in a second, not in ten
    journal = SqliteJournal(tmp_path / "journal.sqlite3")
    health = JournalHealth()
    scheduler = Scheduler(journal, lambda job: None, workers=0, health=health)
    down = threading.Event()
    down.set()
    rounds: list[bool] = []

    def probe() -> None:
        rounds.append(down.is_set())
        if down.is_set():
            raise JournalError("the journal is down")

    scheduler.every("probe", 0.01, probe)
    waits = RecordingEvent()
    scheduler._periodic[0].now = waits  # the event its rounds wait on
    health.on_recovery(scheduler.resume_backed_off)
    scheduler.start()
    try:
        wait_for(lambda: cap in waits.timeouts, "a wait of the whole outage pause", timeout=60)
        failed = waits.timeouts[: waits.timeouts.index(cap) + 1]
        assert failed == [outage_pause(0.01, n) for n in range(1, len(failed) + 1)]
        assert health.outage is not None and health.outage.failures == len(failed)

        down.clear()
        health.succeeded()  # what a worker's next journal call reports
        wait_for(lambda: rounds and rounds[-1] is False, "the round after the journal answered", timeout=60)
        assert waits.woken[len(failed) - 1] is True  # the long wait was ended by the recovery, not its timeout
        wait_for(lambda: len(waits.timeouts) > len(failed), "the next wait", timeout=60)
        assert waits.timeouts[len(failed)] == 0.01  # back to the task's own interval
    finally:
        scheduler.close()
        journal.close()
