"""How a planned run is committed: files with a manifest, or (:mod:`herocollector.service.table_commit`) tables.

A :class:`RunCommitter` takes one job's :class:`~herocollector.output.pipeline.CollectionPlan` and
makes it durable under the job's lease, adopting what an earlier attempt of the job committed. The
runner picks one per output format and records the outcome.

:class:`ManifestCommitter` is the protocol of the file formats: reserve every output path in the
journal; adopt the run if its manifest is complete and true; otherwise remove a stale manifest,
publish the outputs through the pipeline, then write the manifest, the run's commit record
(:mod:`herocollector.output.manifest`), under the manifest root (``manifest_root``, by default
``<output_root>.manifests``), in a store of its own. A manifest that version 0.2 wrote beside the
outputs is adopted or removed like one under the manifest root. A failed attempt keeps the
reservations of the outputs it left published without a manifest
(:meth:`ManifestCommitter.left_published`), so every file under a final name is accounted for,
and the retry replaces them.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from herocollector.config import ServiceConfig
from herocollector.errors import OutputError, OutputTakenError, PublishError
from herocollector.journal.base import Job, JobStore
from herocollector.output.files import provenance_metadata
from herocollector.output.manifest import ManifestEntry, ManifestRoot, check_manifest, new_manifest, write_manifest
from herocollector.output.pipeline import CollectionPlan, OutputPipeline, WriteContext
from herocollector.output.stores import OutputStore, Provenance, open_store
from herocollector.service.lease import JobGuard, LeaseKeeper

log = logging.getLogger(__name__)


def open_manifests(config: ServiceConfig, store: OutputStore | None = None) -> ManifestRoot:
    """The manifest root of a service: ``config.manifest_location`` in a store of its own.

    Args:
        config: The service configuration.
        store: The store of the manifests, if opened already (default: built like the output store).
    """
    location = config.manifest_location
    store = store or open_store(location, config.storage_options, config.staging_dir)
    return ManifestRoot(store, config.output_root, location)


class RunCommitter(Protocol):
    """Makes one job's planned run durable, exactly once."""

    def commit(self, job: Job, plan: CollectionPlan, lease: LeaseKeeper) -> dict[str, int]:
        """Write and commit the run, or adopt what an earlier attempt of the job committed.

        Returns:
            Rows per output (file or table).

        Raises:
            LeaseLost: The lease was taken over; nothing more is committed.
            CollectorError: Bad input or a refused output.
            OSError: Writing failed.
        """

    def left_published(self, job: Job, plan: CollectionPlan) -> list[str]:
        """After a failed :meth:`commit`: outputs left published that the journal must keep reserved."""


class ManifestCommitter:
    """The commit protocol of the file formats; see the module documentation.

    Args:
        config: The service configuration.
        journal: The job journal (output reservations).
        store: Where the outputs are published.
        pipeline: Decodes and writes the outputs.
        stopping: Set when the service closes.
        manifest_store: Where the manifests are written (default: the store of ``config.manifest_location``).
    """

    def __init__(
        self,
        config: ServiceConfig,
        journal: JobStore,
        store: OutputStore,
        pipeline: OutputPipeline,
        stopping: threading.Event,
        manifest_store: OutputStore | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.store = store
        self.pipeline = pipeline
        self.stopping = stopping
        self.manifests = open_manifests(config, manifest_store)

    def commit(self, job: Job, plan: CollectionPlan, lease: LeaseKeeper) -> dict[str, int]:
        """See :meth:`RunCommitter.commit`."""
        try:
            return self._commit(job, plan, lease)
        except PublishError as exc:
            # A staged file (object store) failed: name the output it was for, and the staging folder.
            staged = {str(self.store.staging_path(target.path)): target.path for target in plan.targets}
            location = staged.get(exc.path or "")
            if location is not None and str(location) != exc.path:
                raise exc.at(location) from exc.cause
            raise

    def _commit(self, job: Job, plan: CollectionPlan, lease: LeaseKeeper) -> dict[str, int]:
        """The commit protocol of one run: reserve; adopt, or remove a stale manifest, publish, write the manifest."""
        run_path = job.path or ""
        self._claim(job, [target.path for target in plan.targets])
        check = check_manifest(self.store, self.manifests, run_path, job.id, [target.path for target in plan.targets])
        holder = check.store or self.manifests.store
        if check.committed and check.found is not None:
            log.info(f"job {job.id}: {run_path} is committed already (manifest {check.location}); adopted as it is")
            holder.tidy(check.location)  # a writer killed right after linking leaves its temporary name
            for location in (entry.path for entry in check.found.outputs):
                self.store.tidy(location)
            return {entry.path: entry.rows for entry in check.found.outputs}
        listed = {entry.path for entry in check.found.outputs} if check.found is not None else set()
        own = {t.path: self._may_replace(job, t.path, str(t.path) in listed) for t in plan.targets}
        if check.found is not None:
            why = f"outputs that do not verify: {list(check.mismatched)}" if check.mismatched else "another job"
            log.warning(f"job {job.id}: the manifest {check.location} is stale ({why}); replacing the run's outputs")
            lease.check()
            holder.remove(check.location)  # before any output is replaced: a manifest never lists wrong files
        collected_at = datetime.now(UTC).isoformat()
        provenance = {
            t.path: provenance_metadata(run_path, job.source, collected_at, job.id, [s.metadata for _, s in t.members])
            for t in plan.targets
        }
        stamp = Provenance(job.path or "", job.id, job.token)
        guard = JobGuard(lease, self.stopping)
        context = WriteContext(store=self.store, stamp=stamp, provenance=provenance, may_replace=own, guard=guard)
        written = self.pipeline.write(plan, context)
        entries = [
            ManifestEntry(str(w.path), w.rows, *self.store.published(w.path, w.bytes, w.sha256)) for w in written
        ]
        lease.check()
        write_manifest(self.manifests, new_manifest(run_path, job.id, job.token, entries), stamp)
        return {str(w.path): w.rows for w in written}

    def left_published(self, job: Job, plan: CollectionPlan) -> list[str]:
        """The planned outputs under a final name with this run's provenance: what a failed attempt leaves published.

        One whose provenance cannot be read counts too: a reservation too many blocks a path
        until the retry; one too few would leave a file no record accounts for.
        """
        found = []
        for location in [target.path for target in plan.targets]:
            try:
                existing = self.store.provenance(location)
            except Exception:  # noqa: BLE001 - unknown: keep the reservation
                found.append(str(location))
                continue
            if existing is not None and existing.logger_path == job.path:
                found.append(str(location))
        return found

    def _claim(self, job: Job, targets: list[Path | str]) -> None:
        """Reserve the run's output paths for the job in the journal, in one transaction (all or none).

        Raises:
            OutputError: Another job owns one of them.
        """
        try:
            self.journal.claim_outputs(job.id, [str(target) for target in targets])
        except OutputTakenError as exc:
            raise OutputError(
                f"output collision: {exc.path} already holds the run {exc.owner.path} (job {exc.owner.id}); "
                f"refusing to overwrite it with the run {job.path} (job {job.id})"
            ) from None

    def _may_replace(self, job: Job, target: Path | str, listed: bool) -> bool:
        """Whether an existing file at ``target`` is the run's own, so the job may replace it.

        Args:
            job: The job.
            target: The output location.
            listed: The run's (stale) manifest lists it: the run's own even if it no longer
                reads as an output (damaged), though never if it names another run.

        Raises:
            OutputError: Another run's output, or a foreign file, is there.
        """
        existing = self.store.provenance(target)
        if existing is None:
            return False
        previous = existing.logger_path
        if previous != job.path and not (listed and not previous):
            raise OutputError(
                f"output collision: {target} already holds "
                f"{'the run ' + previous if previous else 'a file not written by herocollector'}; "
                f"refusing to overwrite it with the run {job.path} (job {job.id})"
            )
        return True
