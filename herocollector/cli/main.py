r"""The ``herocollector`` command line: collect, inspect, clean up and check runs; check configs; ask an actor.

The commands: ``collect``, ``inspect``, ``tables`` (the Delta tables below a root), ``cleanup``,
``restore``, ``verify``, ``check-config``, ``remote`` (the running actor's methods) and ``demo``.

Examples::

    herocollector collect /data/runs/run-0001 -o run-0001.arrow --columns experiment,entity
    herocollector collect /data/runs/* -o /data/collected \\
        --template "{{ experiment }}/{{ logger_name }}/{{ measure }}.arrow" --compression zstd
    herocollector collect /data/runs/* -o /data/tables/plant --format delta --columns experiment
    herocollector tables /data/tables
    herocollector inspect /data/runs/run-0001
    herocollector cleanup /data/runs/run-0001 --dry-run
    herocollector cleanup /data/runs/run-0001          # into the run's trash
    herocollector restore /data/runs/run-0001          # undone
    herocollector cleanup /data/runs/run-0001 --purge  # for good
    herocollector check-config /etc/boss/collector.json --run /data/runs/run-0001
    herocollector remote status --realm lab            # ask the running actor
    herocollector demo

Exit status: 0 on success, 1 when herocollector reports an error about its input (a
one-line message on stderr), 2 for bad arguments (a one-line message, never a traceback),
130, 143 or 129 when SIGINT, SIGTERM or SIGHUP stopped it (temporary files and the folders the
command created are removed first; one line on stderr says which signal).

This module assembles the parser from the command modules in :data:`COMMANDS` and dispatches
to them; see :mod:`herocollector.cli` for their interface.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn, cast

from herocollector.cli import check_config, cleanup, collect, common, demo, inspect, remote, restore, tables, verify
from herocollector.cli.common import PROG, Command, Subparsers
from herocollector.errors import CollectorError

COMMANDS: tuple[Command, ...] = (collect, inspect, tables, cleanup, restore, verify, check_config, remote, demo)
"""The command modules, in the order ``herocollector --help`` lists them."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` (one line) and exit with status 2."""
        text = " ".join(f"{self.prog}: error: {message} (see '{self.prog} --help')".split())
        self.exit(2, text + "\n")


def _package_version() -> str:
    try:
        return version("herocollector")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``herocollector`` command, with a sub-command per module in ``COMMANDS``."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Collect disco data-logger runs into Arrow IPC or Parquet files, check a collector actor's BOSS config, "
            "and ask a running actor (remote)."
        ),
        epilog="Exit status: 0 ok, 1 error in the input or the run, 2 bad arguments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    # Every sub-parser is a _Parser too (argparse uses the parent's class); the commands need not know.
    sub = cast("Subparsers", parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``herocollector`` command.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 ok, 1 error, 2 bad arguments (argparse exits with 2 itself),
        130, 143 or 129 when stopped by SIGINT, SIGTERM or SIGHUP (128 + the signal's number).
    """
    args = build_parser().parse_args(argv)
    out, err = common.consoles()
    command = next(c for c in COMMANDS if c.NAME == args.command)
    # The handlers stay installed while the message is printed, so a second signal cannot kill
    # the process between cleaning up and saying why it stopped.
    with common.stop_signals():
        try:
            return command.run(args, out, err)
        except CollectorError as exc:
            err.print(f"{PROG}: error: {exc}", soft_wrap=True)
        except (OSError, TimeoutError, ValueError) as exc:
            err.print(f"{PROG}: error: {type(exc).__name__}: {exc}", soft_wrap=True)
        except common.Interrupted as exc:
            err.print(exc.message, soft_wrap=True)
            return exc.status
        except KeyboardInterrupt:  # raised by a handler other than ours
            err.print(f"{PROG}: interrupted")
            return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
