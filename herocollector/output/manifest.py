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

The manifest of a run is named ``_manifest-<run name>-<hash>.json`` and lies under the manifest
root (``manifest_root``, by default ``<output_root>.manifests`` beside ``output_root``), at the
path that the deepest folder holding all the run's outputs has below ``output_root``: outputs
``/d/out/exp/r1/*.arrow`` have the manifest ``/d/out.manifests/exp/r1/_manifest-r1-<hash>.json``
(:class:`ManifestRoot`). Manifests are kept out of ``output_root`` because polars' directory
scans (``pl.scan_ipc``, ``pl.scan_parquet``) skip no ``_``- or ``.``-prefixed file or folder,
and fail on a JSON file among the data files (``pyarrow.dataset`` skips them, but only by
default: not with ``ignore_prefixes=[]``).

Version 0.2 wrote the manifest beside the outputs (:func:`legacy_manifest_location`). Reading
falls back to that place when the manifest root has none (:meth:`ManifestRoot.find`), so an
upgrade neither collects old runs again nor refuses to clean them; new manifests go to the
manifest root only.
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


def manifest_name(run: str) -> str:
    """The file name of the manifest of ``run``: its name made safe, and a hash of its whole path."""
    name = _UNSAFE.sub("_", Path(run).name)[:80] or "run"
    digest = hashlib.sha1(run.encode()).hexdigest()[:10]
    return f"{MANIFEST_PREFIX}{name}-{digest}.json"


def _common_folder(outputs: Sequence[Path | str]) -> tuple[str, str]:
    """The scheme (``s3://`` or empty) and the deepest folder that holds all ``outputs``."""
    texts = [str(o) for o in outputs]
    scheme = "s3://" if texts[0].startswith("s3://") else ""
    folders = [posixpath.dirname(t[len(scheme) :]) for t in texts]
    return scheme, posixpath.commonpath(folders) if len(folders) > 1 else folders[0]


def legacy_manifest_location(run: str, outputs: Sequence[Path | str]) -> Path | str:
    """Where version 0.2 put the manifest of ``run``: beside its outputs (their deepest common folder)."""
    scheme, folder = _common_folder(outputs)
    filename = manifest_name(run)
    return f"{scheme}{folder}/{filename}" if scheme else Path(folder) / filename


def manifest_location(
    run: str, outputs: Sequence[Path | str], output_root: Path | str, manifest_root: Path | str
) -> Path | str:
    """Where the manifest of ``run`` goes: below ``manifest_root``, where its outputs' folder is below ``output_root``.

    Args:
        run: The logger path.
        outputs: The run's outputs (local paths, or ``s3://`` URLs), all below ``output_root``.
        output_root: The outputs' root (a folder, or ``s3://bucket/prefix``).
        manifest_root: The manifests' root, in the same kind of store.

    Raises:
        OutputError: The outputs are not below ``output_root``.
    """
    scheme, folder = _common_folder(outputs)
    root = str(output_root).rstrip("/")
    if scheme:
        root = root[len(scheme) :] if root.startswith(scheme) else root
    else:
        folder, root = posixpath.normpath(folder), posixpath.normpath(root)
    if folder == root:
        relative = ""
    elif folder.startswith(root.rstrip("/") + "/"):
        relative = folder[len(root.rstrip("/")) + 1 :]
    else:
        raise OutputError(f"the run's outputs are not below output_root {output_root}", f"{scheme}{folder}")
    base = str(manifest_root).rstrip("/")
    parts = [part for part in (base, relative, manifest_name(run)) if part]
    return "/".join(parts) if scheme else Path(*parts)


@dataclass(frozen=True)
class ManifestRoot:
    """Where the manifests of the runs below one output root go.

    Attributes:
        store: The store that holds the manifests (the one of ``root``).
        output_root: The outputs' root.
        root: The manifests' root (``manifest_root``, by default ``<output_root>.manifests``).
    """

    store: OutputStore
    output_root: Path | str
    root: Path | str

    def location(self, run: str, outputs: Sequence[Path | str]) -> Path | str:
        """Where the manifest of ``run`` goes (:func:`manifest_location`)."""
        return manifest_location(run, outputs, self.output_root, self.root)

    def find(self, outputs_store: OutputStore, run: str, outputs: Sequence[Path | str]) -> FoundManifest:
        """The manifest of ``run``: under the manifest root, else where version 0.2 put it (beside the outputs).

        Only a manifest of ``run`` counts at the old place: anything else there (another run's,
        a foreign or unreadable file) is not where manifests go any more, and is left alone.

        Args:
            outputs_store: The store of the outputs (which holds the old manifests).
            run: The logger path.
            outputs: The run's outputs.

        Raises:
            OutputError: Something that is not a manifest is at the new location.
        """
        location = self.location(run, outputs)
        found = read_manifest(self.store, location)
        if found is not None:
            return FoundManifest(location, found, self.store)
        legacy = legacy_manifest_location(run, outputs)
        try:
            old = read_manifest(outputs_store, legacy)
        except OutputError:
            old = None
        if old is not None and old.run == run:
            return FoundManifest(legacy, old, outputs_store, legacy=True)
        return FoundManifest(location, None, self.store)


@dataclass(frozen=True)
class FoundManifest:
    """What :meth:`ManifestRoot.find` found.

    Attributes:
        location: Where the manifest is (or, when none was found, where it goes).
        manifest: The manifest, None if there is none.
        store: The store that holds ``location``.
        legacy: It is at the place version 0.2 put it, beside the outputs.
    """

    location: Path | str
    manifest: Manifest | None
    store: OutputStore
    legacy: bool = False


@dataclass(frozen=True)
class ManifestCheck:
    """What a retry finds where a run's manifest goes (:func:`check_manifest`).

    Attributes:
        location: Where the run's manifest is (or goes, if there is none).
        found: The manifest of this run there, if any.
        committed: ``found`` is the job's, lists exactly the planned outputs, and each of
            them verifies: the run is collected already, and is adopted as it is.
        mismatched: The listed outputs that are missing or do not verify.
        store: The store that holds ``location`` (what removes a stale manifest); None: the
            manifest root's.
        legacy: ``found`` is at the place version 0.2 put it, beside the outputs.
    """

    location: Path | str
    found: Manifest | None
    committed: bool
    mismatched: tuple[str, ...] = ()
    store: OutputStore | None = None
    legacy: bool = False


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


def check_manifest(
    store: OutputStore, manifests: ManifestRoot, run: str, job: int, outputs: Sequence[Path | str]
) -> ManifestCheck:
    """Whether the run is committed already: its manifest is there, the job's, and true.

    Args:
        store: Where the outputs are.
        manifests: Where the manifests are (an old manifest beside the outputs counts too).
        run: The logger path.
        job: The journal job.
        outputs: The outputs the job plans.

    Raises:
        OutputError: A manifest of another run (or a file that is not a manifest) is in the way.
    """
    where = manifests.find(store, run, outputs)
    location, found = where.location, where.manifest
    if found is None:
        return ManifestCheck(location, None, False, store=where.store)
    if found.run != run:
        raise OutputError(f"manifest collision: it belongs to the run {found.run}, not {run}", location)
    if found.job != job or sorted(e.path for e in found.outputs) != sorted(str(o) for o in outputs):
        return ManifestCheck(location, found, False, store=where.store, legacy=where.legacy)
    mismatched = tuple(e.path for e in found.outputs if not store.verify(e.path, e.bytes, e.sha256))
    return ManifestCheck(location, found, not mismatched, mismatched, where.store, where.legacy)


def write_manifest(manifests: ManifestRoot, manifest: Manifest, stamp: Provenance) -> Path | str | None:
    """Write a run's manifest, last, with a conditional create, under the manifest root.

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
    store = manifests.store
    location = manifests.location(manifest.run, [entry.path for entry in manifest.outputs])
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
