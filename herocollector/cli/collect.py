"""``herocollector collect``: logger directories into one Arrow IPC file, or into templated files.

The command waits for ``_DONE`` in every path, plans the runs with the shared
:class:`~herocollector.output.pipeline.OutputPipeline` (the actor's), routes every selected stream
to one file (``-o``) or to the path ``--template`` renders under ``-o``, and writes: each output to
a hidden temporary file, published when all are complete, or every temporary file removed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from herocollector.cli import common
from herocollector.cli.common import CLI_SOURCE, PROG, Subparsers
from herocollector.collector import Collector
from herocollector.config import parse_columns
from herocollector.errors import CollectorError
from herocollector.output.files import FORMATS, OutputFormat, provenance_metadata
from herocollector.output.paths import PathTemplate, Trusted
from herocollector.output.pipeline import CollectionPlan, OutputPipeline, OutputTarget, PlannedRun, Router
from herocollector.run.catalogue import Stream

NAME = "collect"


def register(subparsers: Subparsers) -> None:
    """Add ``collect`` to the ``herocollector`` parser."""
    collect = subparsers.add_parser(
        NAME,
        help="collect logger directories into one Arrow IPC file, or templated files",
        description=(
            "Collect logger directories into one Arrow IPC file at OUT, or, with --template, into files "
            "under the folder OUT at paths rendered per stream (streams with the same path share a file). "
            "Files are written to a temporary name and renamed into place when complete."
        ),
    )
    collect.add_argument("paths", nargs="+", metavar="PATH", help="logger directories, collected in this order")
    collect.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the output file; with --template the output root folder"
    )
    collect.add_argument(
        "--rule",
        type=common.rule,
        metavar="JSON|@FILE",
        help="label-selector rule spec selecting the streams (default: all)",
    )
    collect.add_argument(
        "--columns",
        type=common.columns,
        default={},
        metavar="A,B:TYPE",
        help="stream labels to add as columns, comma-separated; NAME:TYPE pins an Arrow type (e.g. run:int64)",
    )
    collect.add_argument(
        "--template",
        type=common.template,
        metavar="TEMPLATE",
        help=(
            "Jinja2 output path template, relative to OUT (or starting with {{ output_root }}); variables: the "
            "stream labels, output_root, logger_path, logger_name, source_name"
        ),
    )
    collect.add_argument(
        "--format",
        choices=FORMATS,
        default="file",
        help="Arrow IPC file (default), Arrow IPC stream, or Parquet (zstd unless --compression says otherwise)",
    )
    collect.add_argument(
        "--compression",
        type=common.compression,
        default=None,
        metavar="{zstd,lz4}",
        help="IPC buffer compression (default none)",
    )
    common.wait_options(collect)
    collect.add_argument(
        "-j",
        "--jobs",
        type=common.positive,
        default=2,
        metavar="N",
        help="runs decoded at the same time (default 2); rows are written in the order of the paths",
    )
    collect.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _router(args: argparse.Namespace) -> tuple[Path, Router]:
    """The output root and the route of every stream: one file, or the rendered template."""
    if args.template is None:
        target = Path(os.path.abspath(args.output))
        if target.is_dir():
            raise CollectorError(
                "output is a directory; give a file name, or --template to write files under it", target
            )
        return target.parent, lambda index, run, stream: target
    template = PathTemplate(args.template, args.output)

    def route(index: int, run: PlannedRun, stream: Stream) -> Path:
        context = {
            **stream.metadata,
            "source_name": CLI_SOURCE,
            "logger_path": Trusted(str(run.path)),
            "logger_name": run.path.name,
        }
        return template.render(context)

    return template.output_root, route


def _provenance(plan: CollectionPlan, collected_at: str) -> Callable[[OutputTarget], dict[str, str]]:
    """Schema metadata of a CLI output (job 0: written by the command line, not by the actor)."""

    def provenance(target: OutputTarget) -> dict[str, str]:
        sources = list(dict.fromkeys(str(plan.runs[i].path) for i, _ in target.members))
        logger_path = sources[0] if len(sources) == 1 else json.dumps(sources)
        streams = [stream.metadata for _, stream in target.members]
        return provenance_metadata(logger_path, CLI_SOURCE, collected_at, 0, streams)

    return provenance


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector collect``: see :func:`register`."""
    started = time.monotonic()
    paths = Collector([os.path.abspath(p) for p in args.paths]).paths
    for path in paths:
        common.require_logger_dir(path)
    names, types = parse_columns(args.columns)
    pipeline = OutputPipeline(
        rule=args.rule,
        columns=names,
        label_types=types,
        format=OutputFormat.parse(args.format),
        compression=args.compression,
        prefetch_runs=args.jobs - 1,
    )
    # The deferral begins at the write and ends after the results are printed: a signal from
    # then on is acted on when it is safe (see common.Deferral).
    with ExitStack() as held:
        with common.progress(err, args.quiet) as progress:
            common.wait_for_done(paths, args.backoff, args.timeout, progress)
            runs = [pipeline.plan_run(p) for p in paths]
            root, route = _router(args)
            plan = pipeline.plan(runs, route)
            if args.template is None and not plan.targets:
                plan.targets.append(OutputTarget(route(0, runs[0], Stream(0, 1.0, 1.0))))
            collected_at = datetime.now(UTC).isoformat()
            task = progress.add_task("collecting", total=plan.segment_bytes or None, note="0 rows")
            rows = 0

            def on_rows(n: int) -> None:
                nonlocal rows
                rows += n
                progress.update(task, note=f"{rows:,} rows")

            finals = [Path(target.path) for target in plan.targets]
            created = common.missing_folders(finals)
            signals = held.enter_context(common.Deferral())
            try:
                written = pipeline.write(
                    plan,
                    provenance=_provenance(plan, collected_at),
                    on_bytes=lambda n: progress.advance(task, n),
                    on_rows=on_rows,
                    check_cancel=signals.check,
                )
            except BaseException:
                common.remove_leftovers(finals, created)
                raise
        elapsed = time.monotonic() - started
        if not any(run.selected for run in runs):
            err.print(f"{PROG}: warning: no stream was selected in {len(paths)} run(s)", soft_wrap=True)
        for output in written:
            out.print(f"{output.path}  {output.rows:,} rows", soft_wrap=True)
        rate = rows / elapsed if elapsed > 0 else float("inf")
        out.print(
            f"collected {len(paths)} run(s): {rows:,} rows, {len(written)} file(s) under {root}, "
            f"{common.size(plan.segment_bytes)} of segments in {elapsed:.3f} s ({rate:,.0f} records/s)",
            soft_wrap=True,
        )
        if signals.received is not None:  # it came while the outputs were being finished and published
            raise common.Interrupted(signals.received, f"after the {len(written)} output file(s) were published")
    return 0
