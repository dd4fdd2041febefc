"""Delta Lake tables: each run is committed to each of its tables exactly once.

``format: "delta"`` renders ``save_template`` to a table location (a folder, or an ``s3://``
prefix) per stream; the streams of a run that render to the same table go into one commit. Every
row carries the run it came from in a ``logger_path`` column (:data:`TABLE_RUN_COLUMN`).

**Exactly once.** A commit carries a Delta *application transaction*: the ``app_id`` is derived
from the run's path (:func:`run_app_id`), the version is the journal job's id (or, for the
command line, a fresh number). Delta keeps the latest version per ``app_id`` in the table's
snapshot, so before writing, :func:`commit_run` reads it back:

* the job's own version: an earlier attempt committed the run; it is adopted, nothing is written;
* another version, and the table still holds rows of the run: another job (or the command line)
  committed it; the run is refused, unless it is to be replaced (one ``overwrite`` commit with a
  ``logger_path = '…'`` predicate: the old rows go and the new ones come in the same commit);
* otherwise (no version, or the run's rows were deleted): the run is appended.

Keying the transaction by run, not by a counter shared by the workers, matters: Delta keeps only
the latest version per ``app_id``, so job 6 committing after job 7 under one ``app_id`` would make
job 6 look done. A commit lands whole or not at all; data files of a commit that did not land
are unreferenced, and vacuum removes them. The caller's ``before_commit`` (the lease check of a
fenced job) runs right before the write, which finishes within the lease it renews.

**Schema.** Columns are normalised to Delta's types (``stream_id`` becomes a 64-bit integer,
Delta has no unsigned types); a label column that is null throughout the run is left out (the
table's rows of the run read as null there) unless the table has it, when it is cast to the
table's type. A new column merges into the table's schema; a column whose type differs from the
table's fails the run with :class:`~herocollector.errors.SchemaConflict`, naming both types.

**S3** commits use conditional puts (``If-None-Match``), never an unsafe rename, and need no lock
service: :func:`delta_storage_options` sets it up from the ``storage_options`` of the service.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from herocollector.errors import CommitError, OutputError, SchemaConflict
from herocollector.output.paths import object_root
from herocollector.output.verify import OutputCheck, RunCheck

log = logging.getLogger(__name__)

TABLE_RUN_COLUMN = "logger_path"
"""The string column in which every table row carries the run (logger directory) it came from."""
APP_ID_PREFIX = "herocollector-run-"
METADATA_PREFIX = "herocollector."
_UNSIGNED = {pa.uint8(), pa.uint16(), pa.uint32()}


@dataclass(frozen=True)
class TableCommit:
    """A run's commit to one table.

    Attributes:
        table: The table location.
        rows: Rows of the run in the commit (or, adopted, in the table).
        version: The table version that holds them.
        adopted: An earlier attempt had committed them; nothing was written now.
    """

    table: str
    rows: int
    version: int
    adopted: bool = False


def run_app_id(run: str) -> str:
    """The application transaction id of a run: stable, and the same on every host of a fleet."""
    return APP_ID_PREFIX + hashlib.sha256(run.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def cli_version() -> int:
    """A transaction version for a commit without a journal job: unique, and never a job's id."""
    return time.time_ns() // 1000


def delta_storage_options(table: str, options: Mapping[str, Any]) -> dict[str, str] | None:
    """The delta-rs storage options for a table, from the service's ``storage_options``.

    Recognised: ``endpoint_url`` (or ``endpoint_override`` with ``scheme``), ``region``,
    ``access_key_id``, ``secret_access_key``, ``session_token``, ``addressing_style``. Credentials
    not given come from the ``AWS_*`` environment. Commits use conditional puts.

    Returns:
        None for a local table.
    """
    if object_root(table) is None:
        return None
    endpoint = options.get("endpoint_url")
    if endpoint is None and options.get("endpoint_override"):
        endpoint = f"{options.get('scheme', 'https')}://{options['endpoint_override']}"
    mapped = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": options.get("region"),
        "AWS_ACCESS_KEY_ID": options.get("access_key_id"),
        "AWS_SECRET_ACCESS_KEY": options.get("secret_access_key"),
        "AWS_SESSION_TOKEN": options.get("session_token"),
    }
    result = {key: str(value) for key, value in mapped.items() if value}
    if endpoint and str(endpoint).startswith("http://"):
        result["AWS_ALLOW_HTTP"] = "true"
    if options.get("addressing_style") == "virtual":
        result["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "true"
    result.setdefault("AWS_REGION", "us-east-1")
    result["conditional_put"] = "etag"  # put-if-absent commits: safe without a lock, never an unsafe rename
    return result


def open_table(table: str, options: Mapping[str, Any], version: int | None = None) -> Any | None:
    """The Delta table at ``table`` (a ``deltalake.DeltaTable``), or None if there is none yet.

    Raises:
        CommitError: The store could not be read.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    storage = delta_storage_options(table, options)
    try:
        return DeltaTable(table, version=version, storage_options=storage)
    except TableNotFoundError:
        return None
    except OSError as exc:
        raise CommitError(f"reading the table failed: {exc}", table) from None


def run_filter(run: str) -> pc.Expression:
    """The rows of one run."""
    return pc.field(TABLE_RUN_COLUMN) == run


def run_predicate(run: str) -> str:
    """The rows of one run as a Delta SQL predicate (what ``delete`` and a replacing write take)."""
    return f"{TABLE_RUN_COLUMN} = '{run.replace(chr(39), chr(39) * 2)}'"


def committed_version(table: str, run: str, options: Mapping[str, Any]) -> int | None:
    """The run's application transaction version in the table (None: no table, or never committed there)."""
    delta_table = open_table(table, options)
    return None if delta_table is None else delta_table.transaction_version(run_app_id(run))


def rows_of_run(delta_table: Any, run: str) -> int:
    """How many rows of ``run`` the table holds (files pruned by their statistics)."""
    if TABLE_RUN_COLUMN not in _table_schema(delta_table).names:
        return 0
    return int(delta_table.to_pyarrow_dataset().count_rows(filter=run_filter(run)))


def table_schema(schema: pa.Schema) -> pa.Schema:
    """Our output schema as Delta stores it: no unsigned types, and the run column added."""
    fields = [pa.field(f.name, pa.int64()) if f.type in _UNSIGNED else f for f in schema]
    return pa.schema([*fields, pa.field(TABLE_RUN_COLUMN, pa.string())])


def commit_run(
    table: str,
    batches: pa.RecordBatchReader,
    *,
    run: str,
    version: int,
    metadata: Mapping[str, str],
    options: Mapping[str, Any],
    partition_by: Sequence[str] = (),
    replace: bool = False,
    chunked: bool = False,
    before_commit: Callable[[], None] | None = None,
    opened: dict[str, Any] | None = None,
) -> TableCommit:
    """Commit one run's rows to a table, exactly once; see the module documentation.

    Args:
        table: The table location (created on the first commit).
        batches: The run's rows for this table, in our output schema (without ``logger_path``).
        run: The run's logger path (the ``logger_path`` of every row, and the ``app_id``).
        version: The application transaction version (the job's id).
        metadata: Commit metadata (provenance), stored with the commit as ``herocollector.*``.
        options: The service's ``storage_options``.
        partition_by: Partition columns (of a table created now; an existing table keeps its own).
        replace: Whether rows of the run committed by another job (or the command line) are
            replaced; otherwise the run is refused.
        chunked: The run is committed in chunks while it is written: ``version`` is the chunk's
            number, a transaction at or past it means the chunk is in, and an earlier chunk's is
            no reason to refuse.
        before_commit: Called right before the write (raises to stop it).
        opened: Tables this caller opened before, by location (``deltalake.DeltaTable`` s): one
            found here is brought up to date (only the log entries since are read, every other
            writer's included) instead of opened again, and the table after the commit is left
            here. Used by one caller at a time; a table whose commit failed is taken out.

    Raises:
        SchemaConflict: A column's type differs from the table's.
        OutputError: The table holds the run from another commit, and ``replace`` is off.
        CommitError: The store failed; nothing was committed.
    """
    from deltalake import CommitProperties, Transaction, WriterProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError, DeltaProtocolError, SchemaMismatchError

    app_id = run_app_id(run)
    existing = _current_table(table, options, opened)
    replacing = False
    if existing is not None:
        committed = existing.transaction_version(app_id)
        if chunked and committed is not None and committed >= version:
            log.info(f"{table}: chunk {version} of {run} is committed already; adopted")
            return TableCommit(table, 0, existing.version(), adopted=True)
        if chunked:
            committed = None  # earlier chunks of the run: append the next one
        if committed == version:
            log.info(f"{table}: the run {run} is committed already (transaction {app_id} v{version}); adopted")
            return TableCommit(table, rows_of_run(existing, run), existing.version(), adopted=True)
        if committed is not None and rows_of_run(existing, run):
            if not replace:
                raise OutputError(
                    f"the table already holds the run {run} (committed under transaction version {committed}); "
                    f"delete its rows ({run_predicate(run)}) to collect it again",
                    table,
                )
            replacing = True
    schema = table_schema(batches.schema)
    target = _aligned_schema(table, schema, _table_schema(existing) if existing is not None else None)
    counted = _Counter()
    source = pa.RecordBatchReader.from_batches(target, counted.wrap(_with_run(batches, run, target)))
    properties = CommitProperties(
        custom_metadata={f"{METADATA_PREFIX}{k}": str(v) for k, v in metadata.items()},
        app_transactions=[Transaction(app_id, version)],
    )
    if before_commit is not None:
        before_commit()
    try:
        common: dict[str, Any] = {
            "schema_mode": "merge",
            "partition_by": (list(partition_by) or None) if existing is None else None,
            "storage_options": delta_storage_options(table, options),
            "writer_properties": WriterProperties(compression="ZSTD"),
            "commit_properties": properties,
        }
        into = existing if existing is not None else table  # the open table follows its own commit: no reopen
        if replacing:
            write_deltalake(into, source, mode="overwrite", predicate=run_predicate(run), **common)
        else:
            write_deltalake(into, source, mode="append", **common)
    except SchemaMismatchError as exc:
        raise OutputError(f"the run does not fit the table's schema: {exc}", table) from None
    except (CommitFailedError, DeltaProtocolError) as exc:
        raise CommitError(f"the commit did not land: {exc}", table) from None
    except (DeltaError, OSError) as exc:
        raise CommitError(f"writing to the table failed: {exc}", table) from None
    after = existing if existing is not None else open_table(table, options)
    if opened is not None and after is not None:
        opened[table] = after  # only after a commit that landed: a failed one leaves a state not known
    new_version = after.version() if after is not None else -1
    log.info(f"{table}: committed {counted.rows} rows of {run} as version {new_version}")
    return TableCommit(table, counted.rows, new_version)


def _current_table(table: str, options: Mapping[str, Any], opened: dict[str, Any] | None) -> Any | None:
    """The table as it is now: the caller's open one brought up to date (out until a commit lands), or opened."""
    known = None if opened is None else opened.pop(table, None)
    if known is not None:
        try:
            known.update_incremental()
            return known
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, opening it afresh says what it is now
            log.info(f"{table}: bringing the open table up to date failed ({exc}); opening it again")
    return open_table(table, options)


def _table_schema(delta_table: Any) -> pa.Schema:
    """The table's schema, as Arrow."""
    return pa.schema(delta_table.schema().to_arrow())


def _delta_type(field: pa.Field) -> str:
    """A column's Delta type, as Delta names it (what tells two Arrow types apart in a table)."""
    from deltalake import Schema

    return str(json.loads(Schema.from_arrow(pa.schema([field])).to_json())["fields"][0]["type"])


def _aligned_schema(table: str, schema: pa.Schema, existing: pa.Schema | None) -> pa.Schema:
    """The schema to write: null columns dropped or cast to the table's type; conflicts refused."""
    fields = []
    for field in schema:
        known = existing.field(field.name) if existing is not None and field.name in existing.names else None
        if pa.types.is_null(field.type):
            if known is not None:
                fields.append(pa.field(field.name, known.type))
            continue  # a column no row of the run has a value in: it comes with the first run that has one
        if known is not None and not pa.types.is_null(known.type):
            theirs, ours = _delta_type(known), _delta_type(field)
            if theirs != ours:
                raise SchemaConflict(table, field.name, theirs, ours)
            field = pa.field(field.name, known.type)
        else:
            field = _as_delta(field)
        fields.append(field)
    return pa.schema(fields)


def _as_delta(field: pa.Field) -> pa.Field:
    """A new column as the table will hand it back: the first run's files then match every later run's.

    Delta names a list's element ``element`` where pyarrow says ``item``; a table's first files
    written in pyarrow's names would differ in their Parquet schema from all later ones, and files
    of two schemas are not merged into one (:mod:`herocollector.output.parquet_merge`).
    """
    from deltalake import Schema

    return pa.schema(Schema.from_arrow(pa.schema([field])).to_arrow()).field(0)


def _with_run(batches: pa.RecordBatchReader, run: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The run's batches in ``schema``, each with the run column."""
    names = set(schema.names)
    for batch in batches:
        n = batch.num_rows
        columns = {name: batch.column(name) for name in batch.schema.names if name in names}
        columns[TABLE_RUN_COLUMN] = pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int8()).fill_null(0), [run]).cast(
            pa.string()
        )
        arrays = [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


class _Counter:
    """Counts the rows that pass through."""

    def __init__(self) -> None:
        self.rows = 0

    def wrap(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.rows += batch.num_rows
            yield batch


def local_table(table: str) -> Path | None:
    """The folder of a local table (None for an object store one)."""
    return None if object_root(table) is not None else Path(table)


def journal_key(table: str, run: str) -> str:
    """How the journal records a run's rows in a table (tables are shared, a journal output is a job's own)."""
    return f"{table}#{run_app_id(run)}"


def table_of(key: str) -> str:
    """The table of a journal key (:func:`journal_key`); a key without one is the table itself."""
    table, _, app_id = key.rpartition("#")
    return table if table and app_id.startswith(APP_ID_PREFIX) else key


def verify_tables(run: str, outputs: Mapping[str, int], rows: int | None, options: Mapping[str, Any]) -> RunCheck:
    """Check a collected run's commits: its rows in each table, and the files that hold them.

    Args:
        run: The logger path, as journalled.
        outputs: The journal's outputs of the job (:func:`journal_key` → rows).
        rows: The journal's total rows of the job.
        options: The service's ``storage_options``.

    Returns:
        The result; ``ok`` only if every table holds exactly the recorded rows of the run under
        the run's transaction, and every data file holding them is there.
    """
    problems: list[str] = []
    if rows is not None and sum(outputs.values()) != rows:
        problems.append(f"the journal's outputs hold {sum(outputs.values())} rows, the job {rows}")
    checks = tuple(_check_table(table_of(key), run, expected, options) for key, expected in sorted(outputs.items()))
    return RunCheck(run, None, checks, tuple(problems))


def _check_table(table: str, run: str, expected: int, options: Mapping[str, Any]) -> OutputCheck:
    """One table's rows and files of a run."""
    problems: list[str] = []
    found_bytes: int | None = None
    try:
        delta_table = open_table(table, options)
        if delta_table is None:
            problems.append("no Delta table is there")
        else:
            if delta_table.transaction_version(run_app_id(run)) is None:
                problems.append(f"no commit of the run {run} (transaction {run_app_id(run)})")
            found = rows_of_run(delta_table, run)
            if found != expected:
                problems.append(f"the table holds {found} rows of the run, the journal records {expected}")
            dataset = delta_table.to_pyarrow_dataset()
            found_bytes = 0
            for fragment in dataset.get_fragments(filter=run_filter(run)):
                info = dataset.filesystem.get_file_info(fragment.path)
                if info.type != pafs.FileType.File:
                    problems.append(f"the data file {fragment.path} is missing")
                else:
                    found_bytes += int(info.size or 0)
    except (CommitError, OSError, pa.ArrowException) as exc:
        problems.append(f"the table cannot be read: {exc}")
    return OutputCheck(table, expected, found_bytes or 0, "", found_bytes, None, expected, tuple(problems))
