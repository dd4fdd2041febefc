"""``herocollector verify``: check collected outputs against their run manifests.

Each ``PATH`` is a manifest file, an output root or a folder below it (a local folder or an
``s3://bucket/prefix``), or a run directory (with ``--journal``: the run's job names its outputs
and rows). Every output a manifest lists must exist with the listed size and SHA-256 (its bytes
are read and hashed); for a run from the journal, the outputs and rows must also be the
journal's. Exit status 0 when everything matches, 1 on any difference (each printed, naming the
file), as for an error.

The manifests of an output root ``OUT`` lie under its manifest root, ``OUT.manifests`` beside it
unless ``--manifest-root`` names another (the actor's ``manifest_root``), at the path their
outputs' folder has below ``OUT`` (:mod:`herocollector.output.manifest`). For a folder below
``OUT`` without ``--manifest-root``, the manifest root is found as ``A.manifests`` of the nearest
folder ``A`` above it that has one; for a run, the same above its outputs. Manifests that version
0.2 wrote beside the outputs are found there too, for runs that have none under the manifest root.
"""

from __future__ import annotations

import argparse
import posixpath
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from herocollector.cli import common
from herocollector.cli.common import Subparsers
from herocollector.config import default_manifest_root, require_extra
from herocollector.errors import CollectorError, ConfigError
from herocollector.output.delta import table_of, verify_tables
from herocollector.output.manifest import MANIFEST_PREFIX, ManifestRoot, manifest_location
from herocollector.output.stores import LocalStore, OutputStore, S3Store
from herocollector.output.verify import RunCheck, find_manifests, find_run_manifests, verify_job, verify_manifest
from herocollector.run import logdir

NAME = "verify"


def register(subparsers: Subparsers) -> None:
    """Add ``verify`` to the ``herocollector`` parser."""
    verify = subparsers.add_parser(
        NAME,
        help="check collected outputs against their run manifests (size, SHA-256, rows)",
        description=(
            "Check that every output a run manifest lists exists with the listed size and SHA-256. "
            "PATH is a manifest, an output root or s3://bucket/prefix (every manifest of the runs below it, "
            "found under its manifest root, OUTPUT_ROOT.manifests unless --manifest-root names another), or a run "
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
        "--manifest-root",
        metavar="DIR",
        help=(
            "where the run manifests are (the actor's manifest_root; a folder or s3:// prefix); default: "
            "OUTPUT_ROOT.manifests beside each PATH (or beside the nearest folder above it that has one)"
        ),
    )
    common.storage_option_argument(
        verify, "an S3 storage option (endpoint_url, region, access_key_id, ...), repeatable"
    )


def _store(location: str, options: dict[str, Any], staging: Path) -> OutputStore:
    if location.startswith("s3://"):
        require_extra("boto3", "s3", "verifying outputs on s3://")
        bucket = location[5:].split("/", 1)[0]
        return S3Store(f"s3://{bucket}", options, staging)
    return LocalStore(Path(location))


def _is_run(path: Path) -> bool:
    return path.is_dir() and ((path / logdir.STREAMS_DIR).is_dir() or logdir.is_done(path))


def _ancestors(location: str) -> Iterator[str]:
    """``location`` and the folders (or prefixes) above it, nearest first; never a bucket or ``/``."""
    scheme = "s3://" if location.startswith("s3://") else ""
    text = location[len(scheme) :].rstrip("/")
    while text.strip("/") and (scheme == "" or "/" in text):
        yield f"{scheme}{text}"
        text = posixpath.dirname(text)


def _candidates(location: str, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(output root, manifest root) pairs for a folder or prefix, nearest first.

    With ``--manifest-root``, the folder is the output root; otherwise each folder above it
    (itself first) with its ``.manifests`` sibling.
    """
    if args.manifest_root:
        yield location, args.manifest_root
        return
    for root in _ancestors(location):
        try:
            yield root, str(default_manifest_root(root))
        except ConfigError:  # a bucket or the filesystem root: nothing beside it
            continue


def _root_checks(path: str, store: OutputStore, args: argparse.Namespace, staging: Path) -> list[RunCheck]:
    """The manifests of the runs below an output root (or a folder below it) verified."""
    options = dict(args.storage_options)
    for root, manifest_root in _candidates(path, args):
        below = path[len(root) :].strip("/")
        folder = manifest_root.rstrip("/") + (f"/{below}" if below else "")
        manifests = ManifestRoot(_store(folder, options, staging), path, folder)
        if args.manifest_root or next(find_manifests(manifests.store, folder), None) is not None:
            found = find_run_manifests(manifests, store)
            break
    else:  # no manifest root: only those version 0.2 wrote beside the outputs
        found = [(m, store) for m in find_manifests(store, path)]
    return [verify_manifest(store, m, manifest_store=holder) for m, holder in found]


def _checks(path: str, args: argparse.Namespace, staging: Path) -> list[RunCheck]:
    options = dict(args.storage_options)
    if path.startswith("s3://"):
        store = _store(path, options, staging)
        if path.rsplit("/", 1)[-1].startswith(MANIFEST_PREFIX):
            return [verify_manifest(store, path)]
        return _root_checks(path.rstrip("/"), store, args, staging)
    local = Path(path).absolute()
    if _is_run(local):
        return [_check_run(str(local), args, options, staging)]
    if not local.exists():
        raise CollectorError("no such file or folder", local)
    store = LocalStore(local)
    if local.is_file():
        return [verify_manifest(store, str(local))]
    return _root_checks(str(local), store, args, staging)


def _run_manifests(run: str, outputs: Sequence[str], args: argparse.Namespace, staging: Path) -> ManifestRoot:
    """The manifest root of a run: the nearest candidate above its outputs (:func:`_candidates`) with its manifest.

    Raises:
        CollectorError: No folder above the outputs can have a manifest root beside it.
    """
    options = dict(args.storage_options)
    scheme = "s3://" if outputs[0].startswith("s3://") else ""
    folder = scheme + posixpath.commonpath([posixpath.dirname(o[len(scheme) :]) for o in outputs])
    candidates = []
    for root in _ancestors(folder):
        try:
            manifest_root = args.manifest_root or str(default_manifest_root(root))
        except ConfigError:
            continue
        manifests = ManifestRoot(_store(manifest_root, options, staging), root, manifest_root)
        if manifests.store.read_bytes(manifest_location(run, outputs, root, manifest_root)) is not None:
            return manifests
        candidates.append(manifests)
    if not candidates:
        raise CollectorError("no folder above the run's outputs can have a manifest root: pass --manifest-root", folder)
    return candidates[0]  # none holds it: the nearest is named as missing, after a look beside the outputs


def _check_run(run: str, args: argparse.Namespace, options: dict[str, Any], staging: Path) -> RunCheck:
    if not args.journal:
        raise CollectorError("a run directory is verified through its job: pass --journal", run)
    if "://" not in args.journal and not Path(args.journal).is_file():
        raise CollectorError("no such journal file", args.journal)
    if args.journal.startswith(("postgresql://", "postgres://")):
        require_extra("psycopg", "postgres", "a postgresql:// journal")
    from herocollector.journal.sqlite import open_journal

    journal = open_journal(args.journal)
    try:
        job = journal.by_path(run)
    finally:
        journal.close()
    if job is None or not job.outputs:
        state = "no job" if job is None else f"job {job.id} is {job.state.value} with no outputs"
        return RunCheck(run, None, (), (f"nothing to verify in the journal ({state})",))
    outputs = list(job.outputs)
    if any(table_of(key) != key for key in outputs):  # a run committed to Delta tables: its commits are its record
        require_extra("deltalake", "delta", "verifying a run committed to Delta tables")
        return verify_tables(run, job.outputs, job.rows, options)
    store = _store(outputs[0], options, staging)
    try:
        manifests = _run_manifests(run, outputs, args, staging)
    except CollectorError as exc:
        return RunCheck(run, None, (), (exc.reason,))
    return verify_job(store, run, job.outputs, job.rows, manifests)


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
