r"""``herocollector remote``: ask a running collector actor, over HEROS, what the shell cannot see.

The actor's remote methods, one sub-command each::

    herocollector remote status                      # jobs per state, running runs, trash, last scan
    herocollector remote failed                      # failed jobs with their errors
    herocollector remote retry [PATH]                # queue failed jobs again
    herocollector remote collect PATH                # journal a run nobody announced
    herocollector remote cleanup [PATH] [--force]    # trash collected runs' segments
    herocollector remote restore PATH                # undo a cleanup within cleanup_grace
    herocollector remote verify PATH                 # a collected run's outputs against its manifest

``collect``, ``cleanup``, ``restore`` and ``verify`` also exist as local commands on run paths;
``remote`` in front of them means "the actor does it, in its own journal and allowed_roots".
Every sub-command takes ``--realm``, ``--name`` (the BOSS config's ``_id``), ``--timeout`` (seconds
to find the actor) and ``--json``. Work the actor accepts as a task (a ``cleanup`` or ``verify``
that takes longer than 3 s) is followed in ``status()["tasks"]`` until it ends
(``--task-timeout``). It exits 1 when the actor is not found, saying how to check
the realm, or when the actor refuses the call (the one-line message is the actor's).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from herocollector.cli import common
from herocollector.cli.common import PROG, Subparsers
from herocollector.errors import ActorNotFound, CollectorError

NAME = "remote"
METHODS = ("status", "failed", "retry", "collect", "cleanup", "restore", "verify")
"""The sub-commands, in the order of ``herocollector remote --help``."""


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--realm",
        default=os.environ.get("HEROCOLLECTOR_REALM", "heros"),
        help="the HEROS realm of the actor's BOSS (--realm there; default $HEROCOLLECTOR_REALM or 'heros')",
    )
    parser.add_argument(
        "--name", default="collector", help="the actor's HERO name, the _id of its BOSS config (default 'collector')"
    )
    parser.add_argument(
        "--timeout",
        type=common.seconds,
        default=10.0,
        metavar="S",
        help="seconds to keep looking for the actor (default 10)",
    )
    parser.add_argument("--json", action="store_true", help="print the actor's answer as JSON")


def register(subparsers: Subparsers) -> None:
    """Add ``remote`` and its sub-commands to the ``herocollector`` parser."""
    remote = subparsers.add_parser(
        NAME,
        help="ask a running collector actor (status, failed, retry, collect, cleanup, restore, verify)",
        description=(
            "Call a remote method of a running collector actor over HEROS. The actor works in its own journal "
            "and allowed_roots; the local collect, cleanup, restore and verify work on paths directly."
        ),
        epilog="Exit status: 0 ok, 1 actor not found, call refused or (verify) outputs that differ.",
    )
    methods = remote.add_subparsers(dest="method", metavar="METHOD", required=True)
    helps = {
        "status": "jobs per state, running and waiting runs, trash, last scan, recent jobs and remote tasks",
        "failed": "the failed jobs, with their errors and attempt counts",
        "retry": "queue failed jobs again (all, or the one of PATH) with a fresh retry budget",
        "collect": "journal a logger directory, as if a finished event had announced it",
        "cleanup": "move the segments of collected runs (all, or PATH) into their trash",
        "restore": "put a cleaned run's segments back from the trash",
        "verify": "check a collected run's outputs against its manifest and the journal",
    }
    parsers = {method: methods.add_parser(method, help=helps[method], description=helps[method]) for method in METHODS}
    parsers["retry"].add_argument("path", nargs="?", metavar="PATH", help="the run's absolute path (default: all)")
    parsers["cleanup"].add_argument("path", nargs="?", metavar="PATH", help="the run's absolute path (default: all)")
    for method in ("collect", "restore", "verify"):
        parsers[method].add_argument("path", metavar="PATH", help="the run's absolute path, as the actor sees it")
    cleanup = parsers["cleanup"]
    cleanup.add_argument("--no-keep-meta", action="store_true", help="also move streams/ into the trash")
    cleanup.add_argument("--no-wait", action="store_true", help="do not wait for _DONE")
    cleanup.add_argument("--force", action="store_true", help="also clean a run that was not collected")
    cleanup.add_argument(
        "--done-timeout",
        type=common.milliseconds,
        default=5_000,
        metavar="MS",
        help="milliseconds the actor waits for _DONE; 'none' waits until it appears (default 5000)",
    )
    for method in ("cleanup", "verify"):
        parsers[method].add_argument(
            "--task-timeout",
            type=float,
            default=300.0,
            metavar="S",
            help=(
                "seconds to wait for the result when the actor accepts the work as a task (it answers within 3 s); "
                "0 prints the task id at once (default 300)"
            ),
        )
    for parser in parsers.values():
        _connection_options(parser)


def _accepted(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("accepted") is True and "id" in answer


def _follow(proxy: Any, answer: dict[str, Any], timeout: float) -> Any:
    """The result of an accepted task, polled from ``status()["tasks"]``; ``answer`` itself once ``timeout`` passed.

    Raises:
        CollectorError: The task failed; the message is the actor's.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = {task.get("id"): task for task in proxy.status().get("tasks") or []}
        task = tasks.get(answer["id"])
        if task is None:  # dropped from the list of kept tasks: the result is gone
            break
        if task.get("state") == "done":
            return task.get("result")
        if task.get("state") == "error":
            raise CollectorError(f"the actor's task {answer['id']} failed: {task.get('error')}")
        time.sleep(0.5)  # the actor cannot notify a shell: poll
    return answer


def _absolute(path: str | None) -> str | None:
    """A path as typed, made absolute against this shell's folder (the actor refuses relative ones)."""
    return None if path is None else os.path.abspath(path)


def _call(args: argparse.Namespace, proxy: Any) -> Any:
    """The remote call of ``args.method``."""
    method = args.method
    path = _absolute(getattr(args, "path", None))
    if method == "status":
        return proxy.status()
    if method == "failed":
        return proxy.failed()
    if method == "retry":
        return proxy.retry(path)
    if method == "cleanup":
        return proxy.cleanup(
            path,
            keep_meta=not args.no_keep_meta,
            wait_for_done=not args.no_wait,
            timeout=args.done_timeout,
            force=args.force,
        )
    return getattr(proxy, method)(path)


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def _jobs_table(jobs: list[dict[str, Any]], title: str, error: bool) -> Table:
    table = Table(title=title, show_edge=False, pad_edge=False, title_justify="left")
    for column in ("id", "state", "path", "attempts", "rows", "updated"):
        table.add_column(column, justify="right" if column in ("id", "attempts", "rows") else "left")
    if error:
        table.add_column("error")
    for job in jobs:
        row = [
            str(job.get("id")),
            str(job.get("state")),
            str(job.get("path")),
            str(job.get("attempts")),
            "-" if job.get("rows") is None else f"{job['rows']:,}",
            _when(job.get("updated")),
        ]
        if error:
            row.append(str(job.get("error") or ""))
        table.add_row(*row)
    return table


def _print_status(status: dict[str, Any], out: Console) -> None:
    counts = status.get("counts", {})
    out.print("jobs: " + ", ".join(f"{state} {n}" for state, n in counts.items()), soft_wrap=True)
    out.print(
        f"queued: {status.get('queued')}   waiting for _DONE: {status.get('waiting')}   "
        f"workers: {status.get('workers')}   in trash: {status.get('in_trash')}",
        soft_wrap=True,
    )
    out.print(f"journal: {status.get('journal')}   output_root: {status.get('output_root')}", soft_wrap=True)
    if status.get("metrics"):
        out.print(f"metrics: {status['metrics']}", soft_wrap=True)
    scan = status.get("last_scan")
    if scan:
        out.print(
            f"last scan: {scan['finished']} finished run(s), {scan['journalled']} journalled, {scan['seconds']:.2f} s",
            soft_wrap=True,
        )
    for path in status.get("running") or []:
        out.print(f"running: {path}", soft_wrap=True)
    for entry in status.get("pending_deletion") or []:
        out.print(f"trash: {entry['path']} (deleted after {_when(entry.get('delete_after'))})", soft_wrap=True)
    tasks = status.get("tasks") or []
    if tasks:
        table = Table(title="remote tasks", show_edge=False, pad_edge=False, title_justify="left")
        for column in ("id", "method", "path", "state", "result", "error"):
            table.add_column(column)
        for task in tasks:
            table.add_row(
                *(str(task.get(c)) if task.get(c) is not None else "-" for c in ("id", "method", "path", "state")),
                "-" if task.get("result") is None else str(task["result"]),
                str(task.get("error") or ""),
            )
        out.print(table)
    recent = status.get("recent") or []
    if recent:
        out.print(_jobs_table(recent, "recent jobs", error=False))


def _print_accepted(answer: dict[str, Any], out: Console) -> None:
    out.print(
        f"accepted: the actor goes on with {answer.get('path')} as task {answer.get('id')}; "
        f"'{PROG} remote status' shows its result",
        soft_wrap=True,
    )


def _print_verify(report: dict[str, Any], out: Console) -> None:
    if _accepted(report):
        _print_accepted(report, out)
        return
    out.print(f"{report.get('run')}: {'ok' if report.get('ok') else 'DIFFERS'}", soft_wrap=True)
    if report.get("manifest"):
        out.print(f"  manifest: {report['manifest']}", soft_wrap=True)
    for output in report.get("outputs") or []:
        rows = "-" if output.get("rows") is None else f"{output['rows']:,} rows"
        out.print(f"  {'ok' if output.get('ok') else 'DIFFERS'}  {output.get('path')}  {rows}", soft_wrap=True)
    for problem in report.get("problems") or []:
        out.print(f"  problem: {problem}", soft_wrap=True)


def _print_cleanup(args: argparse.Namespace, answer: Any, out: Console) -> None:
    if isinstance(answer, dict):
        _print_accepted(answer, out)
    elif isinstance(answer, bool):
        out.print(
            f"{args.path}: cleaned" if answer else f"{args.path}: not cleaned (refused, unverified, or no _DONE)",
            soft_wrap=True,
        )
    else:
        out.print(f"cleaning {answer} collected run(s) in the background; '{PROG} remote status' shows it")


PRINTERS: dict[str, Callable[[argparse.Namespace, Any, Console], None]] = {
    "status": lambda args, answer, out: _print_status(answer, out),
    "failed": lambda args, answer, out: out.print(
        _jobs_table(answer, f"{len(answer)} failed job(s)", error=True) if answer else "no failed jobs"
    ),
    "retry": lambda args, answer, out: out.print(f"queued {answer} failed job(s) again"),
    "collect": lambda args, answer, out: out.print(_jobs_table([answer], "job", error=True)),
    "cleanup": _print_cleanup,
    "restore": lambda args, answer, out: out.print(
        f"{args.path}: restored" if answer else f"{args.path}: nothing to restore", soft_wrap=True
    ),
    "verify": lambda args, answer, out: _print_verify(answer, out),
}


def _failed(args: argparse.Namespace, answer: Any) -> bool:
    """Whether the answer means the command did not do what was asked (exit 1)."""
    if _accepted(answer):
        return False
    if args.method == "verify":
        return not (isinstance(answer, dict) and answer.get("ok"))
    return args.method in ("cleanup", "restore") and answer is False


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector remote METHOD``: see :func:`register`."""
    from herocollector.actor.launcher import connect  # HEROS and Zenoh only for this command

    try:
        proxy = connect(args.name, args.realm, args.timeout)
    except ActorNotFound as exc:
        err.print(f"{PROG}: error: {exc}", soft_wrap=True)
        return 1
    with proxy:  # closes the Zenoh session before the process exits
        try:
            answer = _call(args, proxy)
            if _accepted(answer) and getattr(args, "task_timeout", 0) > 0:
                answer = _follow(proxy, answer, args.task_timeout)
        except (CollectorError, common.Interrupted):
            raise
        except Exception as exc:  # noqa: BLE001 - HEROS reraises the actor's error as its own types
            raise CollectorError(f"the actor {args.name!r} refused {args.method}: {exc}") from None
    if args.json:
        out.print_json(json.dumps(answer, default=str))
    else:
        PRINTERS[args.method](args, answer, out)
    return 1 if _failed(args, answer) else 0
