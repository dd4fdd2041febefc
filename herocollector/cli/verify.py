"""``herocollector verify``: check collected outputs against their run manifests.

Each ``PATH`` is a manifest file, an output root (every ``_manifest-*.json`` below it), an
``s3://bucket/prefix`` (every manifest below it), or a run directory (with ``--journal``: the
run's job names its outputs and rows). Every output a manifest lists must exist with the listed
size and SHA-256 (its bytes are read and hashed); for a run from the journal, the outputs and
rows must also be the journal's. Exit status 0 when everything matches, 1 on any difference
(each printed, naming the file), as for an error.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from herocollector.cli.common import Subparsers
from herocollector.errors import CollectorError
from herocollector.output.stores import LocalStore, OutputStore, S3Store
from herocollector.output.verify import RunCheck, find_manifests, verify_job, verify_manifest
from herocollector.run import logdir

NAME = "verify"


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def register(subparsers: Subparsers) -> None:
    """Add ``verify`` to the ``herocollector`` parser."""
    verify = subparsers.add_parser(
        NAME,
        help="check collected outputs against their run manifests (size, SHA-256, rows)",
        description=(
            "Check that every output a run manifest lists exists with the listed size and SHA-256. "
            "PATH is a manifest, an output root or s3://bucket/prefix (every manifest below it), or a run "
            "directory (needs --journal; then the outputs and rows must also be the journal's). "
            "Exit status 1 on any difference."
        ),
    )
    verify.add_argument("paths", nargs="+", metavar="PATH", help="output roots, manifests, s3:// prefixes or runs")
    verify.add_argument(
        "--journal",
        metavar="SPEC",
        help="the collector's journal (its SQLite file, e.g. <state_dir>/journal.sqlite3, or a postgresql:// URL)",
    )
    verify.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="an S3 storage option (endpoint_url, region, access_key_id, ...), repeatable",
    )


def _store(location: str, options: dict[str, Any], staging: Path) -> OutputStore:
    if location.startswith("s3://"):
        bucket = location[5:].split("/", 1)[0]
        return S3Store(f"s3://{bucket}", options, staging)
    return LocalStore(Path(location))


def _is_run(path: Path) -> bool:
    return path.is_dir() and ((path / logdir.STREAMS_DIR).is_dir() or logdir.is_done(path))


def _checks(path: str, args: argparse.Namespace, staging: Path) -> list[RunCheck]:
    options = dict(args.storage_options)
    if path.startswith("s3://"):
        store = _store(path, options, staging)
        return [verify_manifest(store, m) for m in find_manifests(store, path)]
    local = Path(path).absolute()
    if _is_run(local):
        return [_check_run(str(local), args, options, staging)]
    if not local.exists():
        raise CollectorError("no such file or folder", local)
    store = LocalStore(local)
    return [verify_manifest(store, m) for m in find_manifests(store, str(local))]


def _check_run(run: str, args: argparse.Namespace, options: dict[str, Any], staging: Path) -> RunCheck:
    if not args.journal:
        raise CollectorError("a run directory is verified through its job: pass --journal", run)
    if "://" not in args.journal and not Path(args.journal).is_file():
        raise CollectorError("no such journal file", args.journal)
    from herocollector.journal.sqlite import open_journal

    journal = open_journal(args.journal)
    try:
        job = journal.by_path(run)
    finally:
        journal.close()
    if job is None or not job.outputs:
        state = "no job" if job is None else f"job {job.id} is {job.state.value} with no outputs"
        return RunCheck(run, None, (), (f"nothing to verify in the journal ({state})",))
    store = _store(next(iter(job.outputs)), options, staging)
    return verify_job(store, run, job.outputs, job.rows)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector verify``: see :func:`register`."""
    failed = checked = 0
    with tempfile.TemporaryDirectory(prefix="herocollector-verify-") as staging:
        for path in args.paths:
            checks = _checks(str(path), args, Path(staging))
            if not checks:
                err.print(f"herocollector: no run manifest found in {escape(str(path))}", soft_wrap=True)
                failed += 1
            for check in checks:
                checked += 1
                where = escape(check.manifest or check.run)
                if check.ok:
                    out.print(f"ok      {where}  ({len(check.outputs)} output(s))", soft_wrap=True)
                    continue
                failed += 1
                out.print(f"FAILED  {where}", soft_wrap=True)
                for line in check.failures():
                    out.print(f"  {escape(line)}", soft_wrap=True)
    out.print(f"verified {checked} run(s): {failed} with differences" if failed else f"verified {checked} run(s): ok")
    return 1 if failed else 0
