"""``herocollector collect``: logger directories into one Arrow IPC or Parquet file, or into templated files.

With ``--recursive`` the paths are roots, searched down to ``--depth`` levels for finished runs
by the actor's catch-up scan (:func:`herocollector.service.scan.finished_runs`). A run whose
segments a cleanup moved into its trash is refused, naming the ``restore`` command; with
``--no-clobber`` an existing output is refused before anything is written. The command waits
for ``_DONE`` in every path, plans the runs with the shared
:class:`~herocollector.output.pipeline.OutputPipeline` (the actor's), routes every selected stream
to one file (``-o``) or to the path ``--template`` renders under ``-o``, and writes: each output to
a hidden temporary file, published when all are complete, or every temporary file removed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TaskID

from herocollector.cli import collect_tables, common
from herocollector.cli.common import CLI_SOURCE, PROG, Subparsers
from herocollector.collector import Collector, decode_threads
from herocollector.config import parse_columns, require_extra
from herocollector.decode import native
from herocollector.errors import CollectorError, ConfigError, OutputError
from herocollector.output.files import FORMATS, OutputFormat, provenance_metadata
from herocollector.output.paths import PathTemplate, Trusted, object_root
from herocollector.output.pipeline import CollectionPlan, OutputPipeline, OutputTarget, PlannedRun, Router, WriteContext
from herocollector.run import logdir, trash
from herocollector.run.catalogue import Stream
from herocollector.service.scan import finished_runs

NAME = "collect"


def register(subparsers: Subparsers) -> None:
    """Add ``collect`` to the ``herocollector`` parser."""
    collect = subparsers.add_parser(
        NAME,
        help="collect logger directories into one Arrow IPC or Parquet file, or templated files",
        description=(
            "Collect logger directories into one Arrow IPC or Parquet file at OUT, or, with --template, into "
            "files under the folder OUT at paths rendered per stream (streams with the same path share a file). "
            "Files are written to a temporary name and renamed into place when complete."
        ),
    )
    collect.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="logger directories, collected in this order (with --recursive: folders to search for finished runs)",
    )
    collect.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="collect every finished run (streams/ and _DONE) below the PATHs, as the actor's scan finds them",
    )
    collect.add_argument(
        "--depth",
        type=_depth,
        default=3,
        metavar="N",
        help="with --recursive: levels below each PATH to search (0: PATH itself; default 3, as scan_depth)",
    )
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
        help=(
            "Arrow IPC file (default), Arrow IPC stream, or Parquet; docs/operations.md says which can be read "
            "as a dataset"
        ),
    )
    collect.add_argument(
        "--compression",
        type=common.compression,
        default=None,
        metavar="{zstd,lz4,none}",
        help="buffer compression: IPC outputs default to none, Parquet to zstd (Parquet cannot be 'none')",
    )
    collect.add_argument(
        "--partition-by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="with --format delta: a label column (one of --columns) a new table is partitioned by; repeatable",
    )
    collect.add_argument(
        "--no-clobber",
        action="store_true",
        help="refuse (exit 1, writing nothing) when an output file exists already; by default it is replaced",
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
    collect.add_argument(
        "--threads",
        type=common.positive,
        default=None,
        metavar="N",
        help=(
            "threads that decode one run in parts, its segments or parts of a large one"
            " (default: the number of cores if more than 2, else 1)"
        ),
    )
    display = collect.add_mutually_exclusive_group()
    display.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    display.add_argument(
        "--progress", action="store_true", help="show the progress display on stderr even when it is not a terminal"
    )
    collect.add_argument(
        "--json", action="store_true", help="print a JSON summary (outputs, rows, bytes, seconds) instead of text"
    )


def _depth(text: str) -> int:
    """``--depth``: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of levels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _run_paths(args: argparse.Namespace) -> list[Path]:
    """The logger directories to collect: the paths, or with ``--recursive`` the finished runs below them."""
    given = [Path(os.path.abspath(p)) for p in args.paths]
    if not args.recursive:
        return Collector([str(p) for p in given]).paths
    for root in given:
        common.require_dir(root)
    found = list(dict.fromkeys(Path(p) for p in finished_runs(given, args.depth)))
    if not found:
        where = ", ".join(str(p) for p in given)
        raise CollectorError(
            f"no finished logger directory (streams/ and _DONE) within {args.depth} level(s) below {where}"
        )
    return found


def _trashed_segments(path: Path) -> list[Path]:
    """The segment files in the run's trash."""
    return [p for p, _ in trash.trashed(path) if p.name.split(".trash-")[0].endswith(logdir.SEGMENT_SUFFIX)]


def _cleaned(path: Path) -> bool:
    """Whether the run has no segment in place and some in its trash."""
    return not logdir.segment_files(path) and bool(_trashed_segments(path))


def _refuse_cleaned(path: Path) -> None:
    """Raise when the run's segments are in its trash: collecting it would write an empty output."""
    if logdir.segment_files(path):
        return
    held = _trashed_segments(path)
    if held:
        raise CollectorError(
            f"its {len(held)} segment file(s) are in the run's trash (the run was cleaned); put them back with "
            f"'{PROG} restore {path}' (or, if a collector actor cleaned it, '{PROG} remote restore {path}') "
            "and collect again",
            path,
        )


def _refuse_existing(plan: CollectionPlan) -> None:
    """``--no-clobber``: raise naming the outputs that exist already."""
    existing = [str(target.path) for target in plan.targets if os.path.lexists(target.path)]
    if existing:
        raise OutputError(
            f"--no-clobber: {len(existing)} output file(s) exist already, nothing was written: {', '.join(existing)}"
        )


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


def _provenance(plan: CollectionPlan, collected_at: str) -> dict[Path | str, dict[str, str]]:
    """Schema metadata of each CLI output (job 0: written by the command line, not by the actor)."""
    found: dict[Path | str, dict[str, str]] = {}
    for target in plan.targets:
        sources = list(dict.fromkeys(str(plan.runs[i].path) for i, _ in target.members))
        logger_path = sources[0] if len(sources) == 1 else json.dumps(sources)
        streams = [stream.metadata for _, stream in target.members]
        found[target.path] = provenance_metadata(logger_path, CLI_SOURCE, collected_at, 0, streams)
    return found


class _Progress:
    """The progress bar of a write: bytes decoded, and the rows so far in its note.

    Args:
        progress: The bar.
        task: Its task.
        total: Segment bytes to decode.
        files: Outputs to finish once every segment is decoded.
        compiling: Whether the decoder is being compiled, said in the bar while it is.
    """

    def __init__(
        self, progress: Progress, task: TaskID, total: int, files: int, compiling: _CompileDisplay | None = None
    ) -> None:
        self._progress = progress
        self._task = task
        self._total = total
        self._files = files
        self._compiling = compiling
        self.rows = 0
        self._bytes = 0
        if compiling is not None:
            compiling.bar = self
            self.describe()

    def rows_written(self, n: int) -> None:
        """Count rows and show the count."""
        self.rows += n
        self._progress.update(self._task, note=f"{self.rows:,} rows")

    def bytes_read(self, n: int) -> None:
        """Advance the bar; once every segment is decoded, say what the wait is for."""
        self._bytes += n
        self._progress.advance(self._task, n)
        if self._total and self._bytes >= self._total:
            self.describe()

    def describe(self) -> None:
        """Say what the wait is for: the compile of the decoder, or the files' sync once every segment is read."""
        if self._compiling is not None and self._compiling.running:
            self._progress.update(self._task, description=native.COMPILING)
        elif self._total and self._bytes >= self._total:
            # Every segment is decoded; what remains (flush, fsync, rename) can take seconds.
            self._progress.update(self._task, description=f"finishing {self._files} file(s): sync and publish")
        else:
            self._progress.update(self._task, description="collecting")


class _CompileDisplay:
    """Says on the console that the decoder is being compiled for this machine, and how long it took.

    The notices come from the thread that loads the kernels; :attr:`console` is the progress
    display's console while it runs, so the lines appear above the bar.
    """

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.seconds = 0.0
        self.running = False
        self.bar: _Progress | None = None

    def __call__(self, notice: native.CompileNotice) -> None:
        self.running = notice.seconds is None
        if notice.seconds is not None:
            self.seconds = notice.seconds
        if not self.quiet:
            self.console.print(f"{PROG}: {notice.message}", soft_wrap=True, highlight=False)
        if self.bar is not None:
            self.bar.describe()


class _SignalGuard:
    """Stops a write at a safe point when a deferred signal came; nothing to check before a publish."""

    def __init__(self, signals: common.Deferral) -> None:
        self._signals = signals

    def check(self) -> None:
        """Raise the deferred signal's interruption, if one came."""
        self._signals.check()

    def before_publish(self) -> None:
        """Nothing: a signal while publishing is acted on after the outputs are published."""


def _refuse_unavailable_output(args: argparse.Namespace) -> None:
    """Refuse, before anything is read, an output this install or this command cannot write.

    Without the check, ``-o s3://bucket/x`` would be taken for a local folder named ``s3:``.

    Raises:
        ConfigError: ``--format delta`` without the ``delta`` extra, or an ``s3://`` output.
    """
    if OutputFormat.parse(args.format).is_table:
        require_extra("deltalake", "delta", "--format delta")
    if object_root(args.output) is not None:
        raise ConfigError(
            f"-o {args.output}: collect writes local files only; write to a folder and upload it, or let the actor "
            "write to the object store (an s3:// output_root, which needs the 's3' extra: "
            "pip install 'herocollector[s3]')"
        )


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector collect``: see :func:`register`."""
    started = time.monotonic()
    compiling = _CompileDisplay(err, args.quiet)
    with native.compile_notices(compiling):
        native.warm_up_in_background()  # a first run compiles while the runs are checked and planned
        return _collect(args, out, err, started, compiling)


def _collect(args: argparse.Namespace, out: Console, err: Console, started: float, compiling: _CompileDisplay) -> int:
    """:func:`run`, with the compile notices shown."""
    _refuse_unavailable_output(args)
    paths = _run_paths(args)
    if args.recursive:  # a cleaned run among those found was collected before: said, and left out
        cleaned = [p for p in paths if _cleaned(p)]
        if cleaned:
            err.print(
                f"{PROG}: warning: left out {len(cleaned)} cleaned run(s) whose segments are in the trash "
                f"('{PROG} restore PATH' puts them back): {', '.join(map(str, cleaned))}",
                soft_wrap=True,
            )
            paths = [p for p in paths if p not in cleaned] or paths  # all cleaned: refused below, naming one
    for path in paths:
        common.require_logger_dir(path)
        _refuse_cleaned(path)
    compression = None if args.compression in (None, "none") else args.compression
    if args.compression == "none" and args.format == OutputFormat.PARQUET:
        err.print(
            f"{PROG} collect: error: --compression none: Parquet outputs are always compressed (zstd or lz4)",
            soft_wrap=True,
        )
        return 2
    names, types = parse_columns(args.columns)
    tables = OutputFormat.parse(args.format).is_table
    if tables:
        collect_tables.check_partitions(args.partition_by, names)
    elif args.partition_by:
        raise ConfigError("--partition-by is for --format delta; files are partitioned by --template")
    pipeline = OutputPipeline(
        rule=args.rule,
        columns=names,
        label_types=types,
        format=OutputFormat.STREAM if tables else OutputFormat.parse(args.format),  # tables commit from a stream
        compression=None if tables else compression,
        prefetch_runs=args.jobs - 1,
        decode_threads=decode_threads(args.threads),
    )
    # The deferral begins at the write and ends after the results are printed: a signal from
    # then on is acted on when it is safe (see common.Deferral).
    with ExitStack() as held:
        with common.progress(err, args.quiet, force=args.progress) as progress:
            compiling.console = progress.console
            common.wait_for_done(paths, args.backoff, args.timeout, progress)
            runs = [pipeline.plan_run(p) for p in paths]
            if tables:
                table = Path(os.path.abspath(args.output))
                route = _router(args)[1] if args.template is not None else (lambda index, run, stream: table)
                total = sum(r.segment_bytes for r in runs)
                task = progress.add_task("collecting", total=total or None, note="0 rows")
                counter = _Progress(progress, task, total, len(runs), compiling)
                signals = held.enter_context(common.Deferral())
                results = collect_tables.commit_runs(args, pipeline, runs, route, counter, signals)
                collect_tables.report(args, out, results, paths, started)
                return 0
            root, route = _router(args)
            plan = pipeline.plan(runs, route)
            if args.template is None and not plan.targets:
                plan.targets.append(OutputTarget(route(0, runs[0], Stream(0, 1.0, 1.0))))
            if args.no_clobber:
                _refuse_existing(plan)
            collected_at = datetime.now(UTC).isoformat()
            total = plan.segment_bytes
            task = progress.add_task("collecting", total=total or None, note="0 rows")
            counter = _Progress(progress, task, total, len(plan.targets), compiling)
            finals = [Path(target.path) for target in plan.targets]
            created = common.missing_folders(finals)
            signals = held.enter_context(common.Deferral())
            try:
                context = WriteContext(
                    provenance=_provenance(plan, collected_at),
                    may_replace=dict.fromkeys((target.path for target in plan.targets), True),  # the CLI clobbers
                    progress=counter,
                    guard=_SignalGuard(signals),
                )
                written = pipeline.write(plan, context)
            except BaseException:
                common.remove_leftovers(finals, created)
                raise
        elapsed = time.monotonic() - started
        if not any(run.selected for run in runs):
            err.print(f"{PROG}: warning: no stream was selected in {len(paths)} run(s)", soft_wrap=True)
        if args.json:
            summary = {
                "runs": [str(p) for p in paths],
                "outputs": [
                    {"path": str(o.path), "rows": o.rows, "bytes": o.bytes, "sha256": o.sha256} for o in written
                ],
                "rows": counter.rows,
                "bytes": sum(o.bytes for o in written),
                "segment_bytes": plan.segment_bytes,
                "seconds": round(elapsed, 6),
            }
            out.print_json(json.dumps(summary))
        else:
            for output in written:
                out.print(f"{output.path}  {output.rows:,} rows, {common.size(output.bytes)}", soft_wrap=True)
            # A first run's compile is no part of the decoding rate; it is said on its own.
            busy = elapsed - compiling.seconds
            rate = counter.rows / busy if busy > 0 else float("inf")
            compiled = f", after {compiling.seconds:.1f} s compiling the decoder (once)" if compiling.seconds else ""
            out.print(
                f"collected {len(paths)} run(s): {counter.rows:,} rows, {len(written)} file(s) under {root}, "
                f"{common.size(plan.segment_bytes)} of segments in {elapsed:.3f} s ({rate:,.0f} records/s{compiled})",
                soft_wrap=True,
            )
        if signals.received is not None:  # it came while the outputs were being finished and published
            raise common.Interrupted(signals.received, f"after the {len(written)} output file(s) were published")
    return 0
