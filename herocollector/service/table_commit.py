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

import pyarrow as pa

from herocollector.config import ServiceConfig
from herocollector.journal.base import Job
from herocollector.output.delta import commit_run, journal_key
from herocollector.output.pipeline import CollectionPlan, OutputPipeline, WriteContext
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
        metadata = {
            "run": run,
            "job": str(job.id),
            "token": str(job.token),
            "source": job.source,
            "collected_at": datetime.now(UTC).isoformat(),
            "actor": self.config.owner,
        }
        outputs: dict[str, int] = {}
        try:
            for output in staged:
                table = str(output.target.path)
                with pa.OSFile(str(output.path)) as source:
                    result = commit_run(
                        table,
                        pa.ipc.open_stream(source),
                        run=run,
                        version=job.id,
                        metadata=metadata,
                        options=self.config.storage_options,
                        partition_by=self.config.partition_by,
                        before_commit=lease.check,
                    )
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
