"""The commit protocol of ``format: "delta"``: one commit per run and table, exactly once, under the lease.

The run is decoded once into one staged file per table (a local IPC stream under
``state_dir/staging``), and each table gets one commit from it through
:func:`herocollector.output.delta.commit_run`: the commit carries the run's application
transaction (version: the job's id) and its provenance (run, job, fencing token, source, time,
actor). A retry after a crash at any point finds the commits that landed and adopts them; the lease
is renewed right before each commit, so a fenced-out actor never commits. The table is the run's
record: no manifest is written, and nothing is reserved in the journal (tables are shared by
every run that renders to them).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from herocollector.config import ServiceConfig
from herocollector.journal.base import Job
from herocollector.output.delta import TableCommit, commit_run, journal_key
from herocollector.output.pipeline import CollectionPlan, OutputPipeline, StagedOutput, WriteContext
from herocollector.service.lease import JobGuard, LeaseKeeper

log = logging.getLogger(__name__)


class TableCommitter:
    """Commits runs to Delta tables; see the module documentation.

    Args:
        config: The service configuration.
        pipeline: Decodes the runs (staging in the IPC stream format).
        stopping: Set when the service closes.
        on_table: Told every table a run was committed to (what compaction looks after).
    """

    def __init__(
        self,
        config: ServiceConfig,
        pipeline: OutputPipeline,
        stopping: threading.Event,
        on_table: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.stopping = stopping
        self.on_table = on_table

    def commit(self, job: Job, plan: CollectionPlan, lease: LeaseKeeper) -> dict[str, int]:
        """See :meth:`herocollector.service.commit.RunCommitter.commit`; keys are :func:`journal_key` s."""
        run = job.path or ""
        context = WriteContext(guard=JobGuard(lease, self.stopping))
        folder = self.config.staging_dir / f"job-{job.id}"
        shutil.rmtree(folder, ignore_errors=True)  # what an attempt killed mid-way left; the lease makes it ours
        staged = self.pipeline.stage(plan, context, folder)
        outputs: dict[str, int] = {}
        try:
            for output in staged:
                table = str(output.target.path)
                result = commit_staged(self.config, job, output, job.id, lease)
                outputs[journal_key(table, run)] = result.rows
                if self.on_table is not None:
                    self.on_table(table)
        finally:
            for output in staged:
                output.discard()
            shutil.rmtree(folder, ignore_errors=True)
        return outputs

    def left_published(self, job: Job, plan: CollectionPlan) -> list[str]:
        """Nothing: a commit that did not land left only unreferenced files, which vacuum removes."""
        return []


def commit_staged(
    config: ServiceConfig,
    job: Job,
    output: StagedOutput,
    version: int,
    lease: LeaseKeeper,
    chunk: int | None = None,
    opened: dict[str, Any] | None = None,
) -> TableCommit:
    """Commit one staged output of a job's run to its table, with the job's provenance, under the lease.

    Args:
        config: The service configuration (storage options, partitions, this actor).
        job: The job (its run, id, fencing token and source go into the commit metadata).
        output: The staged rows of one table.
        version: The run's transaction version: the job's id, or the chunk's number.
        lease: Checked right before the commit.
        chunk: The chunk's number, when the run is followed while it is written.
        opened: The caller's open tables, kept up to date instead of opened for every commit
            (see :func:`~herocollector.output.delta.commit_run`).
    """
    run = job.path or ""
    metadata = {
        "run": run,
        "job": str(job.id),
        "token": str(job.token),
        "source": job.source,
        "collected_at": datetime.now(UTC).isoformat(),
        "actor": config.owner,
    }
    if chunk is not None:
        metadata["chunk"] = str(chunk)
    with pa.OSFile(str(output.path)) as source:
        return commit_run(
            str(output.target.path),
            pa.ipc.open_stream(source),
            run=run,
            version=version,
            metadata=metadata,
            options=config.storage_options,
            partition_by=config.partition_by,
            chunked=chunk is not None,
            before_commit=lease.check,
            opened=opened,
        )
