"""The collection service's configuration: the actor's keyword arguments, validated once, typed.

:meth:`ServiceConfig.from_arguments` takes exactly the arguments a BOSS JSON config gives
``CollectorArchiver`` and turns them into one frozen :class:`ServiceConfig`; every problem is
a :class:`~herocollector.errors.ConfigError` that names the argument.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from herocollector.collector import BASE_COLUMNS
from herocollector.decode.codec import DEFAULT_CHUNK_BYTES
from herocollector.errors import CollectorError, ConfigError
from herocollector.output.files import Compression, OutputFormat
from herocollector.output.paths import PathTemplate, local_root, object_root
from herocollector.run.catalogue import RuleLike, select_streams


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/herocollector`` (``~/.local/state/herocollector`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "herocollector"


def parse_columns(
    columns: Sequence[str] | Mapping[str, str | None] | None,
) -> tuple[tuple[str, ...], dict[str, pa.DataType]]:
    """Label columns as names, or as a mapping of name to a pinned Arrow type name.

    Args:
        columns: ``["experiment", "run"]``, or ``{"experiment": "string", "run": "int64"}``
            (a None type is inferred from the values, as for a plain name). Type names
            are Arrow's (``pa.type_for_alias``): string, large_string, int64, float64, bool ...

    Returns:
        The names (duplicates removed, order kept) and the pinned types.

    Raises:
        ConfigError: A string instead of a list, a clash with a base column, or an unknown type.
    """
    if columns is None:
        return (), {}
    if isinstance(columns, str):
        raise ConfigError("columns must be a list of label names (or a mapping to types), not a string")
    if isinstance(columns, Mapping):
        items = list(columns.items())
    else:
        items = [(name, None) for name in columns]
    names = tuple(dict.fromkeys(str(name) for name, _ in items))
    clash = [n for n in names if n in BASE_COLUMNS]
    if clash:
        raise ConfigError(f"label column(s) {clash} clash with the built-in columns {list(BASE_COLUMNS)}")
    types: dict[str, pa.DataType] = {}
    for name, type_name in items:
        if type_name is None:
            continue
        try:
            types[str(name)] = pa.type_for_alias(str(type_name))
        except (ValueError, KeyError):
            raise ConfigError(f"columns: unknown Arrow type {type_name!r} for label {name!r}") from None
    return names, types


def _number(name: str, value: Any, *, minimum: float = 0.0, allow_none: bool = False, integer: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}")
    if integer and value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {value!r}")
    return int(value) if integer else float(value)


def _journal(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"journal must be a SQLite file path or a postgresql:// URL, got {value!r}")
    if "://" in value and not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"journal: only postgresql:// URLs are supported, got {value.split('://')[0]}://")
    return value if "://" in value else os.path.abspath(value)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the collection service is told, validated.

    Attributes mirror the actor's arguments (see ``docs/configuration.md``); times given in
    milliseconds there (``backoff``, ``timeout``) are kept in milliseconds here.
    """

    save_template: str
    output_root: Path | str
    object_selector: str = "*"
    event_name: str = "finished"
    rule: RuleLike = None
    columns: tuple[str, ...] = ()
    label_types: Mapping[str, pa.DataType] = field(default_factory=dict)
    default_metadata: Mapping[str, Any] = field(default_factory=dict)
    max_retries: int = 5
    path_key: str = "path"
    format: OutputFormat = OutputFormat.FILE
    compression: Compression | None = None
    backoff: int = 100
    timeout: int | None = 60_000
    state_dir: Path = field(default_factory=default_state_dir)
    allowed_roots: tuple[Path, ...] = ()
    retry_delay: float = 1.0
    retry_delay_max: float = 300.0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    claim_runs: bool = False
    claim_timeout: float = 60.0
    claim_heartbeat: float = 5.0
    cleanup_grace: float = 3600.0
    cleanup_after_collect: bool = False
    workers: int = 2
    scan_interval: float | None = 300.0
    scan_depth: int = 3
    lease_timeout: float = 30.0
    journal: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def staging_dir(self) -> Path:
        """Where outputs bound for an object store are staged before upload."""
        return self.state_dir / "staging"

    @property
    def journal_location(self) -> str:
        """The ``journal`` setting, or the default SQLite file under ``state_dir``."""
        return self.journal if self.journal else str(self.state_dir / "journal.sqlite3")

    @property
    def shared_journal(self) -> bool:
        """Whether the journal is a PostgreSQL one that a fleet shares."""
        return self.journal_location.startswith(("postgresql://", "postgres://"))

    @property
    def template(self) -> PathTemplate:
        """The compiled output path template."""
        return PathTemplate(self.save_template, self.output_root)

    def retry_delay_for(self, attempts: int) -> float:
        """Seconds before the next try of a job that failed its ``attempts``-th attempt."""
        return min(self.retry_delay * 2 ** max(attempts - 1, 0), self.retry_delay_max)

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The names of the actor arguments that configure the service."""
        return tuple(inspect.signature(cls.from_arguments).parameters)

    @classmethod
    def from_arguments(
        cls,
        save_template: str,
        object_selector: str = "*",
        event_name: str = "finished",
        rule: Mapping[str, Any] | None = None,
        columns: Sequence[str] | Mapping[str, str | None] | None = None,
        default_metadata: Mapping[str, Any] | None = None,
        max_retries: int = 5,
        path_key: str = "path",
        format: str = "file",
        compression: str | None = None,
        backoff: int = 100,
        timeout: int | None = 60_000,
        state_dir: str | None = None,
        allowed_roots: Sequence[str] | None = None,
        output_root: str | None = None,
        retry_delay: float = 1.0,
        retry_delay_max: float = 300.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        claim_runs: bool = False,
        claim_timeout: float = 60.0,
        claim_heartbeat: float = 5.0,
        cleanup_grace: float = 3600.0,
        cleanup_after_collect: bool = False,
        workers: int = 2,
        scan_interval: float | None = 300.0,
        scan_depth: int = 3,
        lease_timeout: float = 30.0,
        journal: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> ServiceConfig:
        """Validate the actor's keyword arguments.

        Raises:
            ConfigError: An argument is missing or invalid; the message names it.
        """
        metadata = dict(default_metadata or {})
        root = output_root if output_root is not None else metadata.get("output_root")
        if not root:
            raise ConfigError("output_root is required (as an argument or default_metadata['output_root'])")
        bucket_root = object_root(str(root))
        root_path: Path | str = bucket_root if bucket_root else Path(os.path.abspath(local_root(str(root))))
        metadata.setdefault("output_root", str(root_path))
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise ConfigError(f"storage_options must be a mapping, got {type(storage_options).__name__}")
        if storage_options and bucket_root is None:
            raise ConfigError("storage_options are for an s3:// output_root")
        journal_setting = _journal(journal)
        if claim_runs and journal_setting and "://" in journal_setting:
            raise ConfigError(
                "claim_runs is for fleets that share only a filesystem; a PostgreSQL journal already gives "
                "each run to one actor, with fencing: drop claim_runs"
            )
        if not isinstance(save_template, str) or not save_template.strip():
            raise ConfigError("save_template must be a non-empty Jinja2 template")
        PathTemplate(save_template, root_path)
        try:
            select_streams([], rule)  # a malformed rule fails the start, not every job
        except CollectorError as exc:
            raise ConfigError(f"rule: {exc.reason}") from None
        names, types = parse_columns(columns)
        if isinstance(allowed_roots, str):
            raise ConfigError("allowed_roots must be a list of folders, not a string")
        if not isinstance(path_key, str) or not path_key:
            raise ConfigError(f"path_key must be a non-empty string, got {path_key!r}")
        return cls(
            save_template=save_template,
            output_root=root_path,
            object_selector=str(object_selector),
            event_name=str(event_name),
            rule=rule,
            columns=names,
            label_types=types,
            default_metadata=metadata,
            max_retries=_number("max_retries", max_retries, integer=True),
            path_key=path_key,
            format=OutputFormat.parse(format),
            compression=Compression.parse(compression),
            backoff=_number("backoff", backoff, minimum=1, integer=True),
            timeout=_number("timeout", timeout, allow_none=True, integer=True),
            state_dir=Path(os.path.abspath(state_dir)) if state_dir else default_state_dir(),
            allowed_roots=tuple(Path(os.path.realpath(r)) for r in (allowed_roots or [])),
            retry_delay=_number("retry_delay", retry_delay),
            retry_delay_max=_number("retry_delay_max", retry_delay_max),
            chunk_bytes=_number("chunk_bytes", chunk_bytes, minimum=4096, integer=True),
            claim_runs=bool(claim_runs),
            claim_timeout=_number("claim_timeout", claim_timeout, minimum=0.001),
            claim_heartbeat=_number("claim_heartbeat", claim_heartbeat, minimum=0.001),
            cleanup_grace=_number("cleanup_grace", cleanup_grace),
            cleanup_after_collect=bool(cleanup_after_collect),
            workers=_number("workers", workers, minimum=1, integer=True),
            scan_interval=_number("scan_interval", scan_interval, minimum=0.001, allow_none=True),
            scan_depth=_number("scan_depth", scan_depth, integer=True),
            lease_timeout=_number("lease_timeout", lease_timeout, minimum=0.1),
            journal=journal_setting,
            storage_options=dict(storage_options or {}),
        )
