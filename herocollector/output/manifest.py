"""Run manifests: the commit record of a run, the last thing written for it.

After every output of a run is published, the actor writes one JSON manifest beside them, with
a conditional create. It lists each output with its rows, size and SHA-256, and the run path,
the job, the fencing token and the time. Readers and tools should trust a run's outputs only
when its manifest exists: an output without one belongs to a collection that was interrupted
and will be completed (or was refused) by the journal.

A manifest always tells the truth about the files it lists, whenever the process dies:

* a retry first looks at the manifest (:func:`check_manifest`). If it is the job's, lists
  exactly the outputs the job plans, and every one of them verifies (size and SHA-256), the
  run is committed already: the retry adopts it and rewrites nothing;
* otherwise a manifest that is there is stale: it is removed *before* any output is replaced,
  and a new one is written after all of them are published. In between there is no manifest,
  so the outputs read as an interrupted collection, which they are.

The manifest of a run is named ``_manifest-<run name>-<hash>.json`` and lies in the deepest
folder that holds all the run's outputs. Names starting with ``_`` are skipped by
``pyarrow.dataset``, polars and DuckDB globs over the data files, so a manifest never gets in
the way of reading the dataset.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from herocollector.errors import OutputError
from herocollector.output.stores import OutputStore, Provenance

MANIFEST_PREFIX = "_manifest-"
FORMAT_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ManifestEntry:
    """One output of a run."""

    path: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a run's manifest says."""

    run: str
    job: int
    token: int
    collected_at: float
    outputs: tuple[ManifestEntry, ...]
    version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        """The manifest as JSON bytes."""
        data = asdict(self)
        data["outputs"] = [asdict(entry) for entry in self.outputs]
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Read a manifest.

        Raises:
            OutputError: Not a manifest.
        """
        try:
            raw: dict[str, Any] = json.loads(data)
            entries = tuple(ManifestEntry(**entry) for entry in raw["outputs"])
            return cls(
                raw["run"],
                int(raw["job"]),
                int(raw["token"]),
                float(raw["collected_at"]),
                entries,
                int(raw.get("version", 1)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"not a herocollector manifest: {exc}") from None


def manifest_location(run: str, outputs: Sequence[Path | str]) -> Path | str:
    """Where the manifest of ``run`` goes: beside its outputs (their deepest common folder)."""
    texts = [str(o) for o in outputs]
    scheme = "s3://" if texts[0].startswith("s3://") else ""
    folders = [posixpath.dirname(t[len(scheme) :]) for t in texts]
    folder = posixpath.commonpath(folders) if len(folders) > 1 else folders[0]
    name = _UNSAFE.sub("_", Path(run).name)[:80] or "run"
    digest = hashlib.sha1(run.encode()).hexdigest()[:10]
    filename = f"{MANIFEST_PREFIX}{name}-{digest}.json"
    return f"{scheme}{folder}/{filename}" if scheme else Path(folder) / filename


@dataclass(frozen=True)
class ManifestCheck:
    """What a retry finds where a run's manifest goes (:func:`check_manifest`).

    Attributes:
        location: Where the run's manifest goes.
        found: The manifest of this run there, if any.
        committed: ``found`` is the job's, lists exactly the planned outputs, and each of
            them verifies: the run is collected already, and is adopted as it is.
        mismatched: The listed outputs that are missing or do not verify.
    """

    location: Path | str
    found: Manifest | None
    committed: bool
    mismatched: tuple[str, ...] = ()


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
        raise OutputError(f"manifest collision: {exc}", location) from None


def check_manifest(store: OutputStore, run: str, job: int, outputs: Sequence[Path | str]) -> ManifestCheck:
    """Whether the run is committed already: its manifest is there, the job's, and true.

    Args:
        store: Where the outputs are.
        run: The logger path.
        job: The journal job.
        outputs: The outputs the job plans.

    Raises:
        OutputError: A manifest of another run (or a file that is not a manifest) is in the way.
    """
    location = manifest_location(run, outputs)
    found = read_manifest(store, location)
    if found is None:
        return ManifestCheck(location, None, False)
    if found.run != run:
        raise OutputError(f"manifest collision: it belongs to the run {found.run}, not {run}", location)
    if found.job != job or sorted(e.path for e in found.outputs) != sorted(str(o) for o in outputs):
        return ManifestCheck(location, found, False)
    mismatched = tuple(e.path for e in found.outputs if not store.verify(e.path, e.bytes, e.sha256))
    return ManifestCheck(location, found, not mismatched, mismatched)


def write_manifest(store: OutputStore, manifest: Manifest, stamp: Provenance) -> Path | str | None:
    """Write a run's manifest, last, with a conditional create.

    An existing manifest that lists exactly the same outputs is kept; any other one is not
    this attempt's commit record (the caller removed a stale one before publishing).

    Returns:
        Where it is, or None when the run has no outputs.

    Raises:
        OutputError: Another manifest is in the way (retried: the next attempt replaces it).
        PublishError: It cannot be written (a full disk), naming its location.
    """
    if not manifest.outputs:
        return None
    location = manifest_location(manifest.run, [entry.path for entry in manifest.outputs])
    if store.put_bytes(location, manifest.to_json(), stamp):
        return location
    found = read_manifest(store, location)
    if found is None or (found.run, found.job, found.outputs) != (manifest.run, manifest.job, manifest.outputs):
        owner = f"the run {found.run} (job {found.job})" if found is not None else "something else"
        raise OutputError(f"manifest collision: it lists other outputs, of {owner}", location)
    return location


def new_manifest(run: str, job: int, token: int, entries: Sequence[ManifestEntry]) -> Manifest:
    """A manifest of the current time."""
    return Manifest(run, job, token, time.time(), tuple(entries))
