"""Verification of a run's outputs against its manifest: what a cleanup checks before it deletes.

A run's manifest (:mod:`herocollector.output.manifest`) lists every output with its rows, size
and SHA-256. :func:`verify_job` reads the manifest of a journalled job and checks that

* the manifest is there, belongs to the run, and lists exactly the outputs the journal has;
* every listed output exists (in a local folder, or as an object on S3 through the store) with
  the listed size and SHA-256 (its bytes are read and hashed);
* the rows add up: each output's rows as the journal recorded them, and their sum the job's.

:func:`verify_manifest` does the same for one manifest without a journal (the ``herocollector
verify`` command), and :func:`find_manifests` lists the manifests below a folder or prefix. The
manifests lie under the manifest root (:class:`~herocollector.output.manifest.ManifestRoot`);
those of runs collected by version 0.2 lie beside their outputs, and are read there when the
manifest root has none. Every result is typed: a :class:`RunCheck` with an :class:`OutputCheck`
per output, each saying what differs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herocollector.errors import CollectorError, OutputError
from herocollector.output.manifest import MANIFEST_PREFIX, Manifest, ManifestEntry, ManifestRoot
from herocollector.output.stores import OutputStore, S3Store

CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputCheck:
    """One output compared with its manifest entry.

    Attributes:
        path: The output (file path or ``s3://`` URL).
        rows: Rows the manifest lists.
        bytes: Size the manifest lists.
        sha256: SHA-256 the manifest lists.
        found_bytes: Size found (None: missing or unreadable).
        found_sha256: SHA-256 of the bytes found (None: missing or unreadable).
        journal_rows: Rows the journal recorded for it (None: not checked, or not in the journal).
        problems: What differs, one sentence each; empty if the output is as listed.
    """

    path: str
    rows: int
    bytes: int
    sha256: str
    found_bytes: int | None
    found_sha256: str | None
    journal_rows: int | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether nothing differs."""
        return not self.problems


@dataclass(frozen=True)
class RunCheck:
    """A run's outputs compared with its manifest (and the journal).

    Attributes:
        run: The logger path.
        manifest: Where the manifest is (or should be); None when the run has no outputs.
        outputs: One check per output the manifest lists.
        problems: What differs for the run as a whole (no manifest, another run's manifest,
            outputs the journal has and the manifest lacks, rows that do not add up).
    """

    run: str
    manifest: str | None
    outputs: tuple[OutputCheck, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the run and every output are as recorded."""
        return not self.problems and all(o.ok for o in self.outputs)

    def failures(self) -> list[str]:
        """Every problem, each naming the file it is about."""
        where = self.manifest or self.run
        found = [f"{where}: {p}" for p in self.problems]
        found.extend(f"{o.path}: {p}" for o in self.outputs for p in o.problems)
        return found

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (what the remote ``verify`` returns)."""
        return {
            "run": self.run,
            "manifest": self.manifest,
            "ok": self.ok,
            "problems": list(self.problems),
            "outputs": [
                {
                    "path": o.path,
                    "ok": o.ok,
                    "rows": o.rows,
                    "bytes": o.bytes,
                    "sha256": o.sha256,
                    "found_bytes": o.found_bytes,
                    "found_sha256": o.found_sha256,
                    "journal_rows": o.journal_rows,
                    "problems": list(o.problems),
                }
                for o in self.outputs
            ],
        }


@dataclass
class _Digest:
    size: int | None = None
    sha256: str | None = None
    error: str | None = field(default=None)


def _digest(store: OutputStore, location: str) -> _Digest:
    """Size and SHA-256 of an output's bytes as they are now."""
    if isinstance(store, S3Store):
        return _digest_object(store, location)
    try:
        # O_NOFOLLOW: the manifest lists the published file, not whatever a symlink names now;
        # O_NONBLOCK: a FIFO put in its place cannot block the caller.
        fd = os.open(location, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return _Digest(error="missing")
    except OSError as exc:
        reason = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be read: {exc.strerror}"
        return _Digest(error=reason)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return _Digest(error="is not a regular file")
        return _Digest(st.st_size, hashlib.file_digest(fh, "sha256").hexdigest())


def _digest_object(store: S3Store, location: str) -> _Digest:
    from botocore.exceptions import ClientError

    try:
        response = store.client.get_object(Bucket=store.bucket, Key=store.key(location))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return _Digest(error="missing")
        return _Digest(error=f"cannot be read: {exc}")
    digest = hashlib.sha256()
    size = 0
    for chunk in response["Body"].iter_chunks(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return _Digest(size, digest.hexdigest())


def check_output(store: OutputStore, entry: ManifestEntry, journal_rows: int | None = None) -> OutputCheck:
    """Compare one output with its manifest entry (and the rows the journal recorded)."""
    found = _digest(store, entry.path)
    problems = []
    if found.error is not None:
        problems.append(f"output {found.error}")
    else:
        if found.size != entry.bytes:
            problems.append(f"size {found.size} bytes, manifest lists {entry.bytes}")
        if found.sha256 != entry.sha256:
            problems.append(f"SHA-256 {found.sha256}, manifest lists {entry.sha256}")
    if journal_rows is not None and journal_rows != entry.rows:
        problems.append(f"manifest lists {entry.rows} rows, the journal {journal_rows}")
    return OutputCheck(
        entry.path, entry.rows, entry.bytes, entry.sha256, found.size, found.sha256, journal_rows, tuple(problems)
    )


def read_manifest(store: OutputStore, location: Path | str) -> Manifest | None:
    """The manifest at ``location``, None if there is none.

    Raises:
        OutputError: Something that is not a manifest is there.
    """
    data = store.read_bytes(location)
    if data is None:
        return None
    try:
        return Manifest.from_json(data)
    except OutputError as exc:
        raise OutputError(exc.reason, location) from None


def verify_manifest(
    store: OutputStore,
    location: Path | str,
    manifest: Manifest | None = None,
    manifest_store: OutputStore | None = None,
) -> RunCheck:
    """Check every output one manifest lists (no journal: sizes and SHA-256 only).

    Args:
        store: Where the outputs are.
        location: The manifest.
        manifest: Its contents, if read already.
        manifest_store: Where the manifest is, if not in ``store`` (another bucket).
    """
    try:
        manifest = manifest or read_manifest(manifest_store or store, location)
    except CollectorError as exc:
        return RunCheck("", str(location), (), (f"unreadable manifest: {exc.reason}",))
    if manifest is None:
        return RunCheck("", str(location), (), ("manifest missing",))
    checks = tuple(check_output(store, entry) for entry in manifest.outputs)
    return RunCheck(manifest.run, str(location), checks)


def verify_job(
    store: OutputStore, run: str, outputs: Mapping[str, int], rows: int | None, manifests: ManifestRoot
) -> RunCheck:
    """Check a collected run's outputs against its manifest and the journal's record of them.

    Args:
        store: Where the outputs are.
        run: The logger path, as journalled.
        outputs: The journal's outputs of the job, with their rows.
        rows: The journal's total rows of the job.
        manifests: Where the manifests are; a run collected by version 0.2 has its manifest
            beside its outputs, which is read when the manifest root has none.

    Returns:
        The result; ``ok`` only if the manifest is there, lists exactly these outputs, every
        output has the listed size and SHA-256, and the rows add up.
    """
    if not outputs:
        empty = () if not rows else (f"the journal records {rows} rows but no outputs",)
        return RunCheck(run, None, (), empty)
    try:
        where = manifests.find(store, run, list(outputs))
    except CollectorError as exc:  # something that is not a manifest is there, or the outputs are outside output_root
        return RunCheck(run, exc.path, (), (f"unreadable manifest: {exc.reason}",))
    location, manifest = str(where.location), where.manifest
    if manifest is None:
        return RunCheck(run, location, (), ("manifest missing: the run's outputs were never confirmed complete",))
    problems: list[str] = []
    if manifest.run != run:
        problems.append(f"manifest of another run ({manifest.run})")
    listed = {entry.path for entry in manifest.outputs}
    problems.extend(f"the journal's output {p} is not in the manifest" for p in sorted(set(outputs) - listed))
    problems.extend(f"the manifest's output {p} is not in the journal" for p in sorted(listed - set(outputs)))
    listed_rows = sum(entry.rows for entry in manifest.outputs)
    if rows is not None and listed_rows != rows:
        problems.append(f"the manifest's outputs hold {listed_rows} rows, the journal records {rows}")
    checks = tuple(check_output(store, entry, outputs.get(entry.path)) for entry in manifest.outputs)
    return RunCheck(run, location, checks, tuple(problems))


def find_manifests(store: OutputStore, root: str) -> Iterator[str]:
    """The manifests below ``root`` (a local folder or manifest file, or an ``s3://`` prefix), in name order."""
    if isinstance(store, S3Store):
        prefix = store.key(root.rstrip("/") + "/") if root.rstrip("/") != f"s3://{store.bucket}" else ""
        pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix)
        keys = sorted(item["Key"] for page in pages for item in page.get("Contents", []))
        yield from (f"s3://{store.bucket}/{k}" for k in keys if k.rsplit("/", 1)[-1].startswith(MANIFEST_PREFIX))
        return
    path = Path(root)
    if path.is_file():
        yield str(path)
        return
    yield from sorted(str(p) for p in path.rglob(f"{MANIFEST_PREFIX}*.json") if p.is_file() and not p.is_symlink())


def find_run_manifests(manifests: ManifestRoot, store: OutputStore) -> list[tuple[str, OutputStore]]:
    """The manifests of the runs below an output root, each with the store that holds it, in name order.

    Those under the manifest root, then those that version 0.2 wrote beside the outputs (below
    ``output_root``) of a run that has none under the manifest root.

    Args:
        manifests: The manifest root of the output root.
        store: The store of the outputs.
    """
    found = [(m, manifests.store) for m in find_manifests(manifests.store, str(manifests.root))]
    names = {posixpath.basename(m) for m, _ in found}
    legacy = find_manifests(store, str(manifests.output_root))
    found.extend((m, store) for m in legacy if posixpath.basename(m) not in names)
    return found
