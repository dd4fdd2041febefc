"""``herocollector collect`` stopped by a signal leaves nothing behind and says why.

A collection big enough to be still writing when it is signalled: one run of a few MB, read
through 80 symlinked logger directories. The test waits for the hidden temporary file to
appear, freezes the command with SIGSTOP (so it cannot finish between the check and the
signal), checks it is still writing, sends the signal and lets it continue with SIGCONT. The
command must exit with 128 + the signal's number, print one line naming the signal, and leave
no temporary file and no folder it created. A collect waiting for ``_DONE`` is signalled once
its handler is installed (``SigCgt`` in ``/proc``). The handlers themselves are tested in this
process, with real signals.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import wait_until
from herocollector.cli import common

LINKS = 80
"""Logger directories in the collection (symlinks to one run): about 200 MB of segments."""


@pytest.fixture(scope="module")
def big_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """80 logger directories, each a symlink to the same finished run of 150,000 records."""
    root = tmp_path_factory.mktemp("big")
    write_simulated_run(root / "run", records=150_000, entities=2, seed=5)
    links = []
    for i in range(LINKS):
        link = root / f"run-{i:03d}"
        link.symlink_to(root / "run", target_is_directory=True)
        links.append(link)
    return links


def temporaries(root: Path) -> list[Path]:
    """Temporary output files (``.<hash>.<host>.<pid>.<n>.tmp``) below ``root``."""
    return sorted(root.rglob(".*.tmp")) if root.exists() else []


def process_state(pid: int) -> str:
    """The one-letter state of a process in ``/proc/<pid>/stat`` (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def signal_while_writing(args: list[str], watch: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Start ``herocollector ARGS``, signal it once a temporary file is under ``watch``, wait for its end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "herocollector", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_until(
            lambda: process.poll() is not None or temporaries(watch), 120, "a temporary output file", interval=0.01
        )
        assert process.poll() is None, f"collect ended before it was signalled: {process.communicate()}"
        os.kill(process.pid, signal.SIGSTOP)
        wait_until(lambda: process_state(process.pid) == "T", 30, "the command to stop", interval=0.01)
        assert temporaries(watch), "the command finished writing before it was frozen; make the run bigger"
        os.kill(process.pid, signum)
        os.kill(process.pid, signal.SIGCONT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_stopped_by(result: subprocess.CompletedProcess[str], signum: int) -> None:
    """Exit status 128 + ``signum``, and one line on stderr naming the signal, no traceback."""
    assert result.returncode == 128 + signum, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [f"herocollector: interrupted by {signal.Signals(signum).name}"]
    assert result.stdout == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_during_a_one_file_collect_leaves_nothing(big_runs: list[Path], tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out" / "deeper" / "all.arrow"  # neither folder exists: the command creates both
    result = signal_while_writing(["collect", *map(str, big_runs), "-o", str(out), "-q"], tmp_path, signum)
    assert_stopped_by(result, signum)
    assert temporaries(tmp_path) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_during_a_templated_collect_leaves_no_folder_it_created(
    big_runs: list[Path], tmp_path: Path, signum: int
) -> None:
    existing = tmp_path / "collected"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's, not the command's")
    root = existing / "new"
    args = ["collect", *map(str, big_runs), "-o", str(root), "--template", "{{ logger_name }}/{{ measure }}.arrow"]
    result = signal_while_writing([*args, "-q", "--jobs", "3"], existing, signum)
    assert_stopped_by(result, signum)
    assert temporaries(tmp_path) == []
    # The folders the command created are gone; what was there before is untouched.
    assert sorted(p.relative_to(existing).as_posix() for p in existing.rglob("*")) == ["notes.txt"]


def test_sigint_during_a_templated_collect_leaves_no_empty_folder(big_runs: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "collected"
    args = ["collect", *map(str, big_runs), "-o", str(root), "--template", "{{ logger_name }}/{{ measure }}.arrow"]
    result = signal_while_writing([*args, "-q"], tmp_path, signal.SIGINT)
    assert result.returncode == 130, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == ["herocollector: interrupted"]
    assert temporaries(tmp_path) == [] and not root.exists()


# ----------------------------------------------------------------------------------------
# The handlers themselves, in this process, with real signals
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_the_first_stop_signal_raises_and_later_ones_are_ignored(signum: int) -> None:
    before = signal.getsignal(signum)
    with common.stop_signals():
        with pytest.raises(common.Interrupted) as caught:
            os.kill(os.getpid(), signum)
            wait_until(lambda: False, 30, "the signal handler")  # interrupted by the handler
        assert caught.value.status == 128 + signum and isinstance(caught.value, KeyboardInterrupt)
        os.kill(os.getpid(), signal.SIGTERM)  # while cleaning up: ignored, the process lives on
        os.kill(os.getpid(), signum)
    assert signal.getsignal(signum) == before


def test_a_deferred_signal_is_raised_only_at_a_check() -> None:
    with common.stop_signals():
        with common.Deferral() as signals:
            signals.check()  # nothing yet
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the first one is what counts
            wait_until(lambda: signals.received, 30, "the signal handler", interval=0.01)
            assert signals.received == signal.SIGTERM  # recorded, not raised
            with pytest.raises(common.Interrupted) as caught:
                signals.check()
        assert caught.value.status == 143
    message = common.Interrupted(signal.SIGTERM, "after the 3 output file(s) were published").message
    assert message == "herocollector: interrupted by SIGTERM after the 3 output file(s) were published"
    assert common.Interrupted(signal.SIGINT).message == "herocollector: interrupted"


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for ``signum`` (``SigCgt`` in ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_sigterm_while_waiting_for_done(tmp_path: Path) -> None:
    run = Path(write_simulated_run(tmp_path / "run", records=100, seed=1)["path"])
    (run / "_DONE").unlink()  # the logger is still writing: collect waits, forever with --timeout none
    out = tmp_path / "out" / "all.arrow"
    process = subprocess.Popen(
        [sys.executable, "-m", "herocollector", "collect", str(run), "-o", str(out), "--timeout", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: process.poll() is not None or catches(process.pid, signal.SIGTERM),
            60,
            "the SIGTERM handler",
            interval=0.01,
        )
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert_stopped_by(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), signal.SIGTERM)
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the ignored raise, on purpose
def test_a_signal_whose_interrupt_python_ignored_still_ends_the_wait_for_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler's ``Interrupted`` can land where Python ignores exceptions (seen: an import lock's
    weakref callback, "Exception ignored in"); the wait for ``_DONE`` must end all the same, and
    stderr must not show a traceback for it (other ignored exceptions are still reported)."""
    from rich.console import Console

    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_value))
    hook = sys.unraisablehook

    run = Path(write_simulated_run(tmp_path / "run", records=10, seed=1)["path"])
    (run / "_DONE").unlink()

    class SignalledWhileIgnored:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between these bytecodes; its raise is ignored
                pass

    class FailsWhileIgnored:
        def __del__(self) -> None:
            raise RuntimeError("a bug elsewhere")

    with common.stop_signals():
        SignalledWhileIgnored()  # gone at once: its __del__ runs here
        FailsWhileIgnored()
        with common.progress(Console(file=io.StringIO()), quiet=True) as display:
            with pytest.raises(common.Interrupted) as caught:
                common.wait_for_done([run], backoff=10, timeout=20_000, display=display)
    assert caught.value.signum == signal.SIGTERM
    assert [type(exc) for exc in reported] == [RuntimeError]
    assert sys.unraisablehook is hook  # restored on leaving
