"""What the ``herocollector`` commands share: the command interface, argument types, consoles, progress.

See :mod:`herocollector.cli` for the interface every command module implements.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeAlias

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from herocollector.config import parse_columns
from herocollector.errors import CollectorError, MetadataError
from herocollector.output.files import COMPRESSIONS, TEMP_SUFFIX, discard, temporary_name
from herocollector.output.paths import PathTemplate
from herocollector.run import logdir

PROG = "herocollector"
CLI_SOURCE = "herocollector-cli"
"""``source_name`` of files the CLI writes (template variable and provenance)."""


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # not subscriptable at run time
"""The type of ``ArgumentParser.add_subparsers()``' result, which ``register`` receives."""


class Command(Protocol):
    """A command module (see :mod:`herocollector.cli`)."""

    NAME: str

    def register(self, subparsers: Subparsers) -> None:
        """Add the command's parser to ``subparsers``."""

    def run(self, args: argparse.Namespace, out: Console, err: Console) -> int:
        """Run the command; return its exit status."""


# ----------------------------------------------------------------------------------------
# Argument types
# ----------------------------------------------------------------------------------------


def rule(text: str) -> dict[str, Any]:
    """``--rule``: a label-selector rule as JSON text, or ``@file`` holding it."""
    source = "--rule"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise argparse.ArgumentTypeError(f"cannot read rule file {source!r}: {reason}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON in {source}: {exc}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"the rule in {source} must be a JSON object, got {type(spec).__name__}")
    from tools import label_selector

    try:
        label_selector.compile(spec)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"invalid label-selector rule in {source}: {exc}") from None
    return spec


def columns(text: str) -> dict[str, str | None]:
    """``--columns a,b:int64``: label names, comma-separated, each optionally with an Arrow type."""
    result: dict[str, str | None] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, type_name = item.partition(":")
        result[name.strip()] = type_name.strip() or None
    try:
        parse_columns(result)
    except CollectorError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    return result


def milliseconds(text: str) -> int | None:
    """A non-negative number of milliseconds, or ``none`` (wait forever)."""
    if text.strip().lower() in ("none", "forever", "inf"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds (an integer) or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive(text: str) -> int:
    """A positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def compression(text: str) -> str:
    """``zstd``, ``lz4`` or ``none`` (kept as ``"none"``: a Parquet output cannot be uncompressed, and says so)."""
    if text.lower() == "none":
        return "none"
    if text not in COMPRESSIONS:
        choices = ", ".join(repr(c) for c in COMPRESSIONS if c) + ", 'none'"
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {choices})")
    return text


def template(text: str) -> str:
    """``--template``: a Jinja2 path template that compiles."""
    try:
        PathTemplate(text, ".")
    except CollectorError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    return text


def wait_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--timeout`` and ``--backoff`` (waiting for ``_DONE``) to a command's parser."""
    parser.add_argument(
        "--timeout",
        type=milliseconds,
        default=60_000,
        metavar="MS",
        help="milliseconds to wait for _DONE in all the runs; 0 checks once, 'none' waits forever (default 60000)",
    )
    parser.add_argument(
        "--backoff",
        type=milliseconds,
        default=100,
        metavar="MS",
        help="milliseconds between _DONE polls (default 100)",
    )


# ----------------------------------------------------------------------------------------
# Consoles, progress, checks
# ----------------------------------------------------------------------------------------


def consoles() -> tuple[Console, Console]:
    """Consoles for results (stdout) and progress and messages (stderr)."""
    return Console(highlight=False, markup=False), Console(stderr=True, highlight=False, markup=False)


def progress(console: Console, quiet: bool, *, bytes_bar: bool = True, force: bool = False) -> Progress:
    """A rich progress display on ``console``, gone when done.

    Shown on terminals only unless ``force`` (``--progress``), which draws it on ``console``'s
    stream even when that is a pipe or a file. Sizes are in binary units (KiB, MiB), as every
    summary line prints them (:func:`size`).
    """
    parts: list[Any] = [SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn()]
    if bytes_bar:
        parts.append(DownloadColumn(binary_units=True))
    parts += [TextColumn("{task.fields[note]}"), TimeElapsedColumn()]
    if force and not quiet:
        console = Console(file=console.file, force_terminal=True, highlight=False, markup=False)
    return Progress(*parts, console=console, transient=True, disable=quiet or not console.is_terminal)


def size(nbytes: int) -> str:
    """Bytes in human units."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def require_dir(path: Path) -> None:
    """Raise a CollectorError unless ``path`` is an existing directory."""
    if not path.exists():
        raise CollectorError("logger directory does not exist", path)
    if not path.is_dir():
        raise CollectorError("logger path is not a directory", path)


def wait_for_done(paths: Sequence[Path], backoff: int, timeout: int | None, display: Progress) -> None:
    """Wait for ``_DONE`` in every path (showing a spinner), or raise a CollectorError."""
    pending = [p for p in paths if not logdir.is_done(p)]
    if not pending:
        return
    task = display.add_task(f"waiting for _DONE in {len(pending)} run(s)", total=None, note="")
    if not logdir.wait_for_done(pending, backoff, timeout, stop=_SIGNALLED):
        if _stop.received is not None:  # its Interrupted was lost (see _Signalled)
            raise Interrupted(_stop.received)
        missing = [str(p) for p in pending if not logdir.is_done(p)]
        raise CollectorError(f"timed out after {timeout} ms waiting for _DONE in {', '.join(missing)}")
    display.remove_task(task)


def require_logger_dir(path: Path) -> None:
    """Raise a MetadataError at once for a folder that cannot be a logger directory, naming what it lacks.

    A folder with ``streams/`` or a segment may be a run the logger is still writing, worth
    waiting for; one with neither (an empty folder, a typo'd path) would only time out later.
    """
    require_dir(path)
    if not (path / logdir.STREAMS_DIR).is_dir() and not logdir.segment_files(path):
        done = "" if logdir.is_done(path) else ", no _DONE"
        raise MetadataError(
            f"not a logger directory: no {logdir.STREAMS_DIR}/ folder, no *{logdir.SEGMENT_SUFFIX} segment files{done}",
            path,
        )


# ----------------------------------------------------------------------------------------
# Signals, and what an interrupted command leaves behind
# ----------------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a command cleanly (exit status 128 + the signal's number)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; a ``KeyboardInterrupt``, so everything that cleans up for Ctrl-C runs.

    Args:
        signum: The signal's number.
        note: Said after the signal's name (e.g. what was completed before it was acted on).
    """

    def __init__(self, signum: int, note: str = "") -> None:
        self.signum = signum
        self.note = note
        super().__init__(signal.Signals(signum).name)

    @property
    def status(self) -> int:
        """The exit status: 128 + the signal's number, as a shell reports a process the signal killed."""
        return 128 + self.signum

    @property
    def message(self) -> str:
        """The line printed on stderr."""
        text = f"{PROG}: interrupted"
        if self.signum != signal.SIGINT:
            text += f" by {signal.Signals(self.signum).name}"
        return f"{text} {self.note}" if self.note else text


class _StopState:
    """What :func:`stop_signals` has received, and whether a :class:`Deferral` holds the signals off."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = False


_stop = _StopState()


class _Signalled:
    """Ends a wait once a stop signal has arrived, even if the :class:`Interrupted` it raised was lost.

    The handler raises wherever the main thread is, and where Python ignores exceptions (a
    weakref callback during an import, a ``__del__``) only a line on stderr is left of it; the
    handler then ignores the signals that follow, as it must during a cleanup. A wait for
    ``_DONE`` with ``--timeout none`` would then go on for ever. A signal handler must not take
    a lock (a :class:`threading.Event` would), so this sleeps and looks at what was received.
    """

    def wait(self, timeout: float | None = None) -> bool:
        if _stop.received is None:
            time.sleep(timeout or 0.0)
        return _stop.received is not None


_SIGNALLED = _Signalled()


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _stop.received is not None:
        return  # already stopping: let the cleanup that is under way finish
    _stop.received = signum
    if not _stop.deferring:
        raise Interrupted(signum)


@contextmanager
def stop_signals() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread.

    Only the first signal raises: later ones are ignored, so a second Ctrl-C (or a supervisor
    sending SIGTERM twice) cannot cut short the ``finally`` blocks that remove temporary files.
    Inside a :class:`Deferral` the first signal is only recorded. An ``Interrupted`` that
    Python could not raise is recorded too, and prints no traceback. The previous handlers
    (and ``sys.unraisablehook``) are restored on leaving.
    """
    global _stop
    _stop = _StopState()
    saved = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    previous_hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        # Python prints a traceback for an exception it cannot raise ("Exception ignored in"),
        # and the handler's Interrupted can be one (a weakref callback during an import). It
        # is not lost: ``_stop.received`` ends the waits and the deferral's checks raise it.
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, previous in saved.items():
            signal.signal(sig, previous)


class Deferral:
    """Holds the stop signals off while a pipeline writes; they are acted on at safe points only.

    Raised at an arbitrary point, a signal could land inside the pipeline's own bookkeeping
    (a decode thread being started, a temporary file being created or aborted) and leave a
    file or a thread behind. Inside a deferral the first signal is only recorded:
    :meth:`check`, which the pipeline calls between batches (``check_cancel``), raises it, and
    once publishing has begun (``check`` is no longer called) it waits until every output is
    published, so outputs are published all or none. Use as a context manager; ``received``
    then tells whether a signal came after the last ``check``.
    """

    def __enter__(self) -> Deferral:
        _stop.deferring = True
        return self

    def __exit__(self, *exc: object) -> None:
        _stop.deferring = False

    @property
    def received(self) -> int | None:
        """The stop signal that arrived, if one did."""
        return _stop.received

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop signal arrived.

        Raises:
            Interrupted: A stop signal arrived since the deferral began.
        """
        if _stop.received is not None:
            raise Interrupted(_stop.received)


def missing_folders(paths: Iterable[Path]) -> list[Path]:
    """The folders that do not exist yet and writing ``paths`` creates, deepest first."""
    missing: set[Path] = set()
    for path in paths:
        folder = Path(os.path.abspath(path)).parent
        while not folder.exists() and folder != folder.parent:
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def remove_leftovers(finals: Iterable[Path], created: Iterable[Path]) -> None:
    """After a failed write: remove this process's temporary files of ``finals`` and the empty ``created`` folders.

    The pipeline removes its temporary files itself; this is the backstop for one it could not
    account for (an error between its creation and the pipeline recording it). Never raises.

    Args:
        finals: The final paths that were being written.
        created: Folders the command created (deepest first); each is removed only if empty.
    """
    for final in finals:
        # The name up to the per-process sequence number: .<hash>.<host>.<pid>
        prefix = temporary_name(final).name.rsplit(".", 2)[0]
        try:
            leftovers = list(final.parent.glob(f"{prefix}.*{TEMP_SUFFIX}"))
        except OSError:
            continue
        for leftover in leftovers:
            discard(leftover)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (someone else wrote there), or gone: either way not ours to remove


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a ``--storage-option``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def storage_option_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--storage-option KEY=VALUE`` (repeatable; ``args.storage_options``, a list of pairs) to ``parser``."""
    parser.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )
