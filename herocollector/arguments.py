"""Every argument of the collection service, defined once: name, type, default, validation, docs.

:data:`ARGUMENTS` is the one definition. :class:`~herocollector.config.ServiceConfig` validates with it,
``ServiceConfig.from_arguments`` and the actor's ``__init__`` have the signature :data:`SIGNATURE`, and
the table of ``docs/configuration.md`` is :func:`reference_table` (``python -m herocollector.arguments``).
"""

from __future__ import annotations

import inspect

from herocollector import argument_types as parse
from herocollector.argument_types import REQUIRED, Argument, default_state_dir
from herocollector.decode.codec import DEFAULT_CHUNK_BYTES
from herocollector.output.batches import parse_columns
from herocollector.output.files import Compression, OutputFormat

__all__ = ["ARGUMENTS", "ARGUMENT_NAMES", "REQUIRED", "SIGNATURE", "Argument", "default_state_dir", "reference_table"]


ARGUMENTS: tuple[Argument, ...] = (
    Argument(
        "save_template",
        "str",
        REQUIRED,
        parse.template,
        doc=(
            "Jinja2 output path template, rendered once per selected stream in a sandbox with `StrictUndefined` (an "
            "undefined variable fails the job). Variables, later ones winning: `default_metadata`, the event "
            "metadata, the stream labels (with `stream_id`, `epoch_scale`, `value_scale`), then `source_name` (the "
            "HERO that sent the event, `remote` or `scan`), `logger_path` (the path as announced) and `logger_name` "
            "(its base name). Every value a `{{ … }}` prints must be one path segment: a value with `/`, an empty, "
            "`.` or `..` value, or one that starts with `.` or `_` fails the job (`LabelPathError`, not retried), so "
            "a label cannot aim at another run's files or make a file that dataset readers (pyarrow, polars, Spark) "
            "skip. Values from `default_metadata`, `output_root` and `logger_path` are trusted and may hold `/`; "
            "`{{ value \\| subpath }}` lets any value span folders, or start with `.` or `_`, on purpose (its parts "
            "still may not be empty, `.` or `..`). A relative result is taken relative to `output_root`. The result "
            "must resolve inside `output_root`, symlinks included, and its file name be at most 255 bytes. Streams "
            "with the same rendered path share one file. A template that does not compile stops the actor at start."
        ),
        example='`"{{ output_root }}/{{ experiment }}/{{ logger_name }}/{{ measure }}.arrow"`',
    ),
    Argument(
        "object_selector",
        "str",
        "*",
        parse.text,
        doc=(
            "Zenoh object selector of the logger HEROs whose event is observed. It becomes part of the key expression"
            " `<objects>/<realm>/<object_selector>/<event_name>`, so `*` means every HERO in the realm."
        ),
        example='`"*"`, `"demo-logger"`',
    ),
    Argument(
        "event_name",
        "str",
        "finished",
        parse.text,
        doc="The event announcing a finished run.",
        example='`"finished"`',
    ),
    Argument(
        "rule",
        "Mapping[str, Any] | None",
        None,
        parse.rule,
        doc=(
            "disco-tools label-selector rule spec (the JSON form) selecting the streams to collect. It sees each "
            "stream's labels, `stream_id`, `epoch_scale`, `value_scale` and `_logger_path`. A malformed rule stops "
            "the actor at start."
        ),
        example='`{"match": {"key": "model", "op": "eq", "value": "supply_chain"}}`',
        default_doc="`null` (every stream)",
    ),
    Argument(
        "columns",
        "Sequence[str] | Mapping[str, str | None] | None",
        None,
        parse_columns,
        doc=(
            "Stream labels added as columns after `stream_id`, `epoch`, `indices` and `values`, with duplicates "
            "removed and order kept. A stream without the label gets null. A list of names types each column from the"
            " values of the run's selected streams. A mapping of names to Arrow type names (`string`, `large_string`,"
            " `int64`, `float64`, `bool`, …; `null` to infer) pins the types, so every file of a dataset shares one "
            'schema even when a label is `7` in one run and `"seven"` in another (values are cast). A name that '
            "clashes with a built-in column, or an unknown type, stops the actor at start."
        ),
        example='`["organisation", "experiment"]`, `{"experiment": "string", "run": "int64"}`',
        default_doc="`null` (no label columns)",
    ),
    Argument(
        "default_metadata",
        "Mapping[str, Any] | None",
        None,
        parse.mapping("default_metadata"),
        doc=(
            "Template variables available to every job. Its `output_root` is used when the `output_root` argument is "
            "not given, and `output_root` is added to it when missing."
        ),
        example='`{"output_root": "/data/collected", "site": "lab-2"}`',
        default_doc="`null` (`{}`)",
    ),
    Argument(
        "max_retries",
        "int",
        5,
        parse.number("max_retries", integer=True),
        doc=(
            "Retries of a failed job after its first attempt, so at most `1 + max_retries` attempts. After that the "
            "job stays `failed` in the journal until `retry()`."
        ),
        example="`3`",
    ),
    Argument(
        "path_key",
        "str",
        "path",
        parse.path_key,
        doc=(
            "Key of the logger directory in the event payload dict, or in the metadata of a `(payload, metadata)` "
            "event. A bare string event is taken as the path."
        ),
        example='`"run_dir"`',
    ),
    Argument(
        "format",
        "str",
        "file",
        OutputFormat.parse,
        doc=(
            '`"file"` writes Arrow IPC files (random access, `pa.ipc.open_file`). `"stream"` writes Arrow IPC streams'
            ' (`pa.ipc.open_stream`). `"parquet"` writes Parquet files (`pyarrow.parquet`, one row group per batch). '
            'All have the same columns and carry the provenance in their schema metadata. `"delta"` commits each '
            "run to Delta Lake tables (`save_template` renders the table's folder; the `[delta]` extra; see "
            "docs/tables.md). Any other value stops the actor at start."
        ),
        example='`"parquet"`',
    ),
    Argument(
        "partition_by",
        "Sequence[str] | None",
        None,
        parse.names("partition_by"),
        doc=(
            '`format: "delta"` only: label columns the tables are partitioned by (Hive-style folders '
            "`column=value`). Each must be among `columns`; anything else stops the actor at start. A table keeps "
            "the partitioning it was created with."
        ),
        example='`["experiment"]`',
        default_doc="`null` (not partitioned)",
    ),
    Argument(
        "compact_interval",
        "float | None",
        3600.0,
        parse.number("compact_interval", minimum=1, allow_none=True),
        doc=(
            '`format: "delta"` only: seconds between compactions of the tables this actor writes to. A table with '
            "small files has them merged into fewer, larger ones (their row groups copied, a commit that changes no "
            "data); "
            "in a fleet one actor at a time compacts a table, under a journal lease. `null` turns it off."
        ),
        example="`600`, `null`",
    ),
    Argument(
        "vacuum_retention",
        "float | None",
        168.0,
        parse.number("vacuum_retention", minimum=168, allow_none=True),
        doc=(
            '`format: "delta"` only: after a compaction, files the table no longer references and that were '
            "removed more than this many hours ago are deleted (`vacuum`). At least Delta's minimum of 168 hours, so"
            " a reader that opened an older version within the retention still finds its files. `null` never "
            "vacuums."
        ),
        example="`336`",
    ),
    Argument(
        "follow",
        "bool",
        False,
        parse.flag("follow"),
        doc=(
            '`format: "delta"` only: collect a run while it is written. A run announced, or found by the scan, '
            "without `_DONE` is read every `follow_interval` seconds from where the last chunk ended, and the records "
            "completed since are committed to its tables as one chunk (exactly once, a cursor in the journal); "
            "at `_DONE` the last chunk is committed and `run_collected` fires. See docs/operations.md. With another "
            "format the actor stops at start."
        ),
        example="`true`",
    ),
    Argument(
        "follow_interval",
        "float",
        30.0,
        parse.number("follow_interval", minimum=0.1),
        doc="Seconds between the chunks of a followed run (`follow: true`).",
        example="`2`",
    ),
    Argument(
        "compact_on_done",
        "bool",
        True,
        parse.flag("compact_on_done"),
        doc=(
            "With `follow: true`: when a followed run ends, its small chunk files in each table are merged into one "
            "file per partition (their row groups copied, a commit that changes no data)."
        ),
        example="`false`",
    ),
    Argument(
        "manifest_root",
        "str | None",
        None,
        parse.optional_text,
        doc=(
            "Where the run manifests of the file formats go: a folder (or `s3://` prefix, in the same store as "
            "`output_root`) outside `output_root`, so that a directory scan of `output_root` (`pl.scan_ipc`, "
            "`pl.scan_parquet`, `pyarrow.dataset`) sees only data files. A manifest's path below it is the one its "
            'outputs have below `output_root`. Not used by `format: "delta"`, whose commits are the record.'
        ),
        example='`"/data/manifests"`',
        default_doc="`null` (`<output_root>.manifests`, beside `output_root`)",
    ),
    Argument(
        "decode_threads",
        "int | None",
        None,
        parse.number("decode_threads", minimum=1, allow_none=True, integer=True),
        doc=(
            "Threads that decode the segments of one run in parallel (the rows come out exactly as with one "
            "thread). Each thread holds the compressed bytes of its part (about `chunk_bytes`) and at most two "
            "chunks of decoded columns. One thread already has a reader thread decompress ahead of it, which "
            "keeps two cores busy; on two cores, decoding in parts took 1.3–1.5× as long, so the default decodes "
            "in parts only on more cores. A followed run (`follow`) is read on one thread."
        ),
        example="`4`",
        default_doc="`null` (the number of cores when there are more than two, else 1)",
    ),
    Argument(
        "compression",
        "str | None",
        None,
        Compression.parse,
        doc=(
            'Buffer compression: `null`, `"zstd"` or `"lz4"`. For Parquet, `null` means zstd. Any other value stops '
            "the actor at start."
        ),
        example='`"zstd"`',
        default_doc="`null` (none; Parquet: zstd)",
    ),
    Argument(
        "backoff",
        "int",
        100,
        parse.number("backoff", minimum=1, integer=True),
        doc="Milliseconds between checks of a waiting run's `_DONE`.",
        example="`500`",
    ),
    Argument(
        "timeout",
        "int | None",
        60_000,
        parse.number("timeout", allow_none=True, integer=True),
        doc=(
            "Milliseconds from a run's announcement to wait for its `_DONE`. Meanwhile the job is `waiting` and holds"
            " no worker; other runs are collected. When the time is up the attempt fails with `DoneTimeout` and is "
            "retried under the retry policy (the next attempt waits afresh). `null` waits forever."
        ),
        example="`600000`",
    ),
    Argument(
        "state_dir",
        "str | None",
        None,
        parse.state_dir,
        doc=(
            "Folder of the job journal `journal.sqlite3` and of the lock file `lock`, created if missing. One actor "
            "per `state_dir`: a second one fails to start with a message naming the holder (host and pid)."
        ),
        example='`"/var/lib/herocollector"`',
        default_doc="`null` (`$XDG_STATE_HOME/herocollector`, or `~/.local/state/herocollector`)",
    ),
    Argument(
        "allowed_roots",
        "Sequence[str] | None",
        None,
        parse.allowed_roots,
        doc=(
            "Folders the logger directories must lie in, after symlinks are resolved. An announced run outside them "
            "fails its job, without retries. The catch-up scan walks them. `cleanup` is refused for every run while "
            "this is not set."
        ),
        example='`["/data/runs"]`',
        default_doc="`null` (collect from anywhere, clean nothing, scan nothing)",
    ),
    Argument(
        "output_root",
        "str | None",
        None,
        parse.optional_text,
        doc=(
            "Where outputs go, and what every rendered path must stay inside: a local folder (or a `file://` URI), or"
            " an object store prefix `s3://bucket/prefix` (with `storage_options`). One of the two must be given, or "
            "the actor stops at start. If both are given, the argument is the confinement root but `{{ output_root "
            "}}` in the template renders the `default_metadata` value, so keep them equal."
        ),
        example='`"/data/collected"`, `"s3://lab-data/collected"`',
        default_doc='`null` (`default_metadata["output_root"]`)',
    ),
    Argument(
        "retry_delay",
        "float",
        1.0,
        parse.number("retry_delay"),
        doc=("Seconds before the first retry of a failed job. The delay doubles with every further attempt."),
        example="`5.0`",
    ),
    Argument(
        "retry_delay_max",
        "float",
        300.0,
        parse.number("retry_delay_max"),
        doc="Upper bound of the retry delay, in seconds.",
        example="`60.0`",
    ),
    Argument(
        "chunk_bytes",
        "int",
        DEFAULT_CHUNK_BYTES,
        parse.number("chunk_bytes", minimum=4096, integer=True),
        doc=(
            "Decompressed bytes decoded per step. This bounds the decoder's memory and the size of the record batches."
        ),
        example="`4194304`",
        default_doc="`1048576` (1 MiB)",
    ),
    Argument(
        "claim_runs",
        "bool",
        False,
        parse.flag("claim_runs"),
        doc=(
            "Claim each run before collecting it, for a fleet of actors that hear the same events and see the same "
            "run directories (for example on NFS). The claim is a file `.herocollector.claim` created exclusively in "
            "the logger directory, with a heartbeat. A run claimed by another live actor is deferred and looked at "
            "again `claim_heartbeat` s later, without counting an attempt. After a success the owner writes "
            "`.herocollector.collected` (owner, outputs), and the other actors then mark their jobs done with those "
            "outputs. Needs write access to the run directories. See `herocollector/claims.py` for the guarantees on "
            "NFS."
        ),
        example="`true`",
    ),
    Argument(
        "claim_timeout",
        "float",
        60.0,
        parse.number("claim_timeout", minimum=0.001),
        doc=(
            "Seconds without a heartbeat after which another actor's claim is taken as stale (that actor presumed "
            "dead) and taken over. Keep it well above `claim_heartbeat` plus clock skew between hosts."
        ),
        example="`120.0`",
    ),
    Argument(
        "claim_heartbeat",
        "float",
        5.0,
        parse.number("claim_heartbeat", minimum=0.001),
        doc=(
            "Seconds between heartbeats (mtime updates) of a held claim. This is also the delay before a deferred job"
            " looks again."
        ),
        example="`10.0`",
    ),
    Argument(
        "cleanup_grace",
        "float",
        3600.0,
        parse.number("cleanup_grace"),
        doc=(
            "Seconds that cleaned files stay in the trash before they are deleted for good. `cleanup` renames "
            "`NNNNN.seg.zst` to `NNNNN.seg.zst.trash-<unix time>` (and `streams` to `streams.trash-<unix time>`) in "
            "place. `restore(path)` puts them back until a background thread purges them. `0` deletes at once."
        ),
        example="`86400`",
    ),
    Argument(
        "cleanup_after_collect",
        "bool",
        False,
        parse.flag("cleanup_after_collect"),
        doc=(
            "Clean every run (into the trash, `keep_meta=True`) right after it is collected. This is subject to the "
            "same checks as `cleanup`, so it needs `allowed_roots`."
        ),
        example="`true`",
    ),
    Argument(
        "remote_cleanup",
        "bool",
        True,
        parse.flag("remote_cleanup"),
        doc=(
            "Whether remote callers may call `cleanup` and `restore`. HEROS calls carry no caller identity, so while "
            "this is `true` any process that can join the realm can trash collected runs' segments (they stay "
            "restorable for `cleanup_grace`). `false` refuses both remotely (a `RunRefused` error) while "
            "`cleanup_after_collect`, the purge and in-process calls keep working. Keep it `true` only in a realm "
            'closed with Zenoh access control (see docs/operations.md, "Securing a realm").'
        ),
        example="`false`",
    ),
    Argument(
        "workers",
        "int",
        2,
        parse.number("workers", minimum=1, integer=True),
        doc=(
            "Runs collected at the same time, each by one worker thread. Decoding, zstd and Arrow release the GIL, so"
            " on a machine with N cores up to N workers add throughput."
        ),
        example="`4`",
    ),
    Argument(
        "scan_interval",
        "float | None",
        300.0,
        parse.number("scan_interval", minimum=0.001, allow_none=True),
        doc=(
            "Seconds between catch-up scans: at start and then periodically, `allowed_roots` are walked for finished "
            "runs (a folder with `streams/` and `_DONE`) that have no job, and those are journalled with the source "
            "`scan`. Runs announced while no actor listened, or whose event was lost, are collected this way; a run "
            "that has a job (collected, cleaned, failed, …) is never journalled again. `null` turns scanning off. "
            "There is no scan without `allowed_roots`."
        ),
        example="`600`, `null`",
    ),
    Argument(
        "scan_depth",
        "int",
        3,
        parse.number("scan_depth", integer=True),
        doc=(
            "Folder levels below each of `allowed_roots` that the scan looks at: `0` is the root itself, `1` its "
            "sub-folders, and so on. The scan does not descend into a logger directory, into hidden folders, or along"
            " symlinks."
        ),
        example="`1`",
    ),
    Argument(
        "lease_timeout",
        "float",
        30.0,
        parse.number("lease_timeout", minimum=0.1),
        doc=(
            "Seconds a worker's lease on a running job lasts unless renewed (every third of it). On a shared "
            "PostgreSQL journal, an actor that stays silent longer (paused, partitioned, dead) is fenced out: another"
            " actor takes the job with a new fencing token, and the silent one can neither publish nor mark the job "
            "done, nor report a failure of it: it logs `job N for PATH: lease lost, fenced out`."
        ),
        example="`60.0`",
    ),
    Argument(
        "journal",
        "str | None",
        None,
        parse.journal,
        doc=(
            "The job journal. A file path is a SQLite journal for this actor alone. A `postgresql://` URL (libpq "
            "syntax: host, port, database, user, password, `sslmode`; a Unix socket folder as "
            "`?host=/run/postgresql`) is a journal that a fleet of actors shares: each run is journalled once however"
            " many actors hear its event, a worker takes a job under a lease with a fencing token, idle actors are "
            "woken by `LISTEN/NOTIFY`, and `status`, `failed`, `retry`, `collect`, `cleanup` and `restore` work from "
            "any actor. herocollector creates and migrates its tables (`herocollector_*`) itself."
        ),
        example='`"postgresql://collector:secret@db.lab/herocollector"`',
        default_doc="`null` (`<state_dir>/journal.sqlite3`)",
    ),
    Argument(
        "storage_options",
        "Mapping[str, Any] | None",
        None,
        parse.mapping("storage_options"),
        doc=(
            "For an `s3://` `output_root`: how to reach the store. `endpoint_url` (or `endpoint_override` with "
            "`scheme`), `region`, `access_key_id`, `secret_access_key`, `session_token`, `addressing_style` (`path`, "
            "the default with an endpoint, or `virtual`). Credentials not given come from the usual `AWS_*` "
            "environment, config files or instance roles. Outputs are staged under `<state_dir>/staging` and uploaded"
            " with a conditional create, so nothing is ever overwritten. An unknown option stops the actor at start."
        ),
        example='`{"endpoint_url": "https://s3.lab:9000", "region": "us-east-1"}`',
    ),
    Argument(
        "metrics_port",
        "int | None",
        None,
        parse.number("metrics_port", allow_none=True, integer=True),
        doc=(
            "TCP port of the Prometheus endpoint `http://<metrics_address>:<port>/metrics` that the actor serves for "
            "Prometheus to scrape (`0`: a free port, logged). `null` serves none. See docs/operations.md."
        ),
        example="`9464`",
    ),
    Argument(
        "metrics_address",
        "str",
        "127.0.0.1",
        parse.text,
        doc="Address the metrics endpoint listens on; `0.0.0.0` (or `::`) for every interface.",
        example='`"0.0.0.0"`',
    ),
)


ARGUMENT_NAMES = tuple(a.name for a in ARGUMENTS)

SIGNATURE = inspect.Signature(
    [
        inspect.Parameter(
            a.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if a.required else a.default,
            annotation=a.annotation,
        )
        for a in ARGUMENTS
    ]
)
"""The service's keyword arguments as a signature, in table order (the required one first)."""


def reference_table() -> str:
    """The argument table of ``docs/configuration.md``, generated from :data:`ARGUMENTS`."""
    lines = ["| argument | default | description | example |", "|---|---|---|---|"]
    lines.extend(a.markdown_row() for a in ARGUMENTS)
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_table())
