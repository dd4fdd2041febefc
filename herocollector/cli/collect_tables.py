"""``herocollector collect --format delta``: each run committed to its Delta tables, one commit per run and table.

``-o`` is the table (or, with ``--template``, the root the template renders table folders under).
Each run is decoded once into staged files (one per table, in a temporary folder) and committed
with :func:`herocollector.output.delta.commit_run`, carrying the run's application transaction
and the command line's provenance. A run the table already holds is replaced in the same commit
(its old rows go, its new ones come), unless ``--no-clobber`` refuses it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from rich.console import Console

from herocollector.cli import common
from herocollector.cli.common import CLI_SOURCE
from herocollector.errors import ConfigError, OutputError
from herocollector.output.delta import cli_version, commit_run, open_table, rows_of_run
from herocollector.output.pipeline import OutputPipeline, OutputTarget, PlannedRun, Progress, Router, WriteContext


@dataclass(frozen=True)
class TableOutput:
    """One run's commit to one table, as the command reports it."""

    table: str
    run: str
    rows: int
    version: int
    replaced: bool


class _Guard:
    """Stops at a deferred signal between batches; nothing is committed after it."""

    def __init__(self, signals: common.Deferral) -> None:
        self._signals = signals

    def check(self) -> None:
        """Raise the deferred signal's interruption, if one came."""
        self._signals.check()

    def before_publish(self) -> None:
        """The same, right before a commit."""
        self._signals.check()


def check_partitions(partition_by: list[str], columns: tuple[str, ...]) -> None:
    """``--partition-by`` columns must be among ``--columns``.

    Raises:
        ConfigError: One is not.
    """
    outside = [name for name in partition_by if name not in columns]
    if outside:
        raise ConfigError(f"--partition-by {','.join(outside)}: must be among --columns {list(columns)}")


def commit_runs(
    args: argparse.Namespace,
    pipeline: OutputPipeline,
    runs: list[PlannedRun],
    route: Router,
    progress: Progress,
    signals: common.Deferral,
) -> list[TableOutput]:
    """Commit every run to its tables, in order: one commit per run and table.

    Raises:
        OutputError: ``--no-clobber`` and a table holds a run already (nothing of that run is committed).
    """
    collected_at = datetime.now(UTC).isoformat()
    results: list[TableOutput] = []
    with tempfile.TemporaryDirectory(prefix="herocollector-tables-") as folder:
        for run in runs:
            plan = pipeline.plan([run], route)
            if args.no_clobber:
                _refuse_held(plan.targets, str(run.path))
            staged = pipeline.stage(plan, WriteContext(progress=progress, guard=_Guard(signals)), Path(folder))
            try:
                for output in staged:
                    table = str(output.target.path)
                    held = _holds(table, str(run.path))
                    with pa.OSFile(str(output.path)) as source:
                        commit = commit_run(
                            table,
                            pa.ipc.open_stream(source),
                            run=str(run.path),
                            version=cli_version(),
                            metadata={
                                "run": str(run.path),
                                "job": "0",
                                "source": CLI_SOURCE,
                                "collected_at": collected_at,
                            },
                            options={},
                            partition_by=args.partition_by or (),
                            replace=True,
                            before_commit=signals.check,
                        )
                    results.append(TableOutput(table, str(run.path), commit.rows, commit.version, held))
            finally:
                for output in staged:
                    output.discard()
    return results


def _holds(table: str, run: str) -> bool:
    """Whether the table holds rows of the run already."""
    delta_table = open_table(table, {})
    return delta_table is not None and rows_of_run(delta_table, run) > 0


def _refuse_held(targets: list[OutputTarget], run: str) -> None:
    """``--no-clobber``: raise naming the tables that hold the run already."""
    held = [str(t.path) for t in targets if _holds(str(t.path), run)]
    if held:
        raise OutputError(
            f"--no-clobber: the table(s) {', '.join(held)} hold the run {run} already; nothing was committed"
        )


def report(
    args: argparse.Namespace, out: Console, results: list[TableOutput], paths: list[Path], started: float
) -> None:
    """Print what was committed: text, or the ``--json`` summary."""
    elapsed = time.monotonic() - started
    rows = sum(r.rows for r in results)
    if args.json:
        summary = {
            "runs": [str(p) for p in paths],
            "outputs": [
                {"path": r.table, "run": r.run, "rows": r.rows, "version": r.version, "replaced": r.replaced}
                for r in results
            ],
            "rows": rows,
            "seconds": round(elapsed, 6),
        }
        out.print_json(json.dumps(summary))
        return
    for r in results:
        what = "replaced" if r.replaced else "committed"
        out.print(f"{r.table}  version {r.version}: {what} {r.rows:,} rows of {r.run}", soft_wrap=True)
    tables = len({r.table for r in results})
    out.print(
        f"collected {len(paths)} run(s): {rows:,} rows in {len(results)} commit(s) to {tables} table(s) "
        f"in {elapsed:.3f} s",
        soft_wrap=True,
    )
