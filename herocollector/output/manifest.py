"""Run manifests: the last thing written for a run, and the sign that its outputs are complete.

After every output of a run is published, the actor writes one JSON manifest beside them, with
a conditional create. It lists each output with its rows, size and SHA-256, and the run path,
the job, the fencing token and the time. Readers and tools should trust a run's outputs only
when its manifest exists: an output without one belongs to a collection that was interrupted
and will be completed (or was refused) by the journal.

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


def write_manifest(store: OutputStore, manifest: Manifest, stamp: Provenance) -> Path | str | None:
    """Write a run's manifest, last, with a conditional create.

    An existing manifest of the same run and job (an earlier attempt got that far) is kept.

    Returns:
        Where it is, or None when the run has no outputs.

    Raises:
        OutputError: A manifest of another run is in the way.
    """
    if not manifest.outputs:
        return None
    location = manifest_location(manifest.run, [entry.path for entry in manifest.outputs])
    if store.put_bytes(location, manifest.to_json(), stamp):
        return location
    existing = store.read_bytes(location)
    found = Manifest.from_json(existing) if existing is not None else None
    if found is None or (found.run, found.job) != (manifest.run, manifest.job):
        raise OutputError(f"manifest collision: {location} belongs to {found.run if found else 'something else'}")
    return location


def new_manifest(run: str, job: int, token: int, entries: Sequence[ManifestEntry]) -> Manifest:
    """A manifest of the current time."""
    return Manifest(run, job, token, time.time(), tuple(entries))
