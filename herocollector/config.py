"""The collection service's configuration, validated once and typed: :class:`ServiceConfig`.

Each argument is defined once, in :mod:`herocollector.arguments`; :meth:`ServiceConfig.from_arguments`
validates the arguments a BOSS JSON config gives ``CollectorArchiver`` into one frozen
:class:`ServiceConfig`. Every problem is a :class:`~herocollector.errors.ConfigError` that names
the argument.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from herocollector.arguments import ARGUMENT_NAMES, ARGUMENTS, SIGNATURE, default_state_dir
from herocollector.decode.codec import DEFAULT_CHUNK_BYTES
from herocollector.decode.parallel import default_threads
from herocollector.errors import ConfigError
from herocollector.output.batches import parse_columns
from herocollector.output.delta import TABLE_RUN_COLUMN
from herocollector.output.files import Compression, OutputFormat
from herocollector.output.paths import PathTemplate, local_root, object_root
from herocollector.run.catalogue import RuleLike

__all__ = ["ServiceConfig", "default_manifest_root", "default_state_dir", "parse_columns", "require_extra"]


def require_extra(module: str, extra: str, feature: str) -> None:
    """Fail at configuration time, naming the extra to install, when ``feature`` needs a missing ``module``.

    Raises:
        ConfigError: ``module`` cannot be imported.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        raise ConfigError(f"{feature} needs the {extra!r} extra: pip install 'herocollector[{extra}]'")


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
    remote_cleanup: bool = True
    workers: int = 2
    scan_interval: float | None = 300.0
    scan_depth: int = 3
    lease_timeout: float = 30.0
    journal: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    partition_by: tuple[str, ...] = ()
    compact_interval: float | None = 3600.0
    vacuum_retention: float | None = 168.0
    manifest_root: Path | str | None = None
    decode_threads: int | None = None
    follow: bool = False
    follow_interval: float = 30.0
    compact_on_done: bool = True

    @property
    def manifest_location(self) -> Path | str:
        """Where the run manifests go: ``manifest_root``, or ``<output_root>.manifests`` beside the outputs."""
        if self.manifest_root is not None:
            return self.manifest_root
        return default_manifest_root(self.output_root)

    @property
    def threads(self) -> int:
        """Threads that decode one run: ``decode_threads``, or the default (``decode.parallel.default_threads``)."""
        return self.decode_threads or default_threads()

    @property
    def staging_dir(self) -> Path:
        """Where outputs bound for an object store are staged before upload."""
        return self.state_dir / "staging"

    @property
    def journal_location(self) -> str:
        """The ``journal`` setting, or the default SQLite file under ``state_dir``."""
        return self.journal if self.journal else str(self.state_dir / "journal.sqlite3")

    @property
    def owner(self) -> str:
        """This service among a fleet: its host and resolved ``state_dir``.

        The one identity of a service: it takes jobs' leases and runs' claims under it. Stable
        across restarts, and unique among live services thanks to the ``state_dir`` lock.
        """
        return f"{socket.gethostname()}:{os.path.realpath(self.state_dir)}"

    def retry_delay_for(self, attempts: int) -> float:
        """Seconds before the next try of a job that failed its ``attempts``-th attempt."""
        return float(min(self.retry_delay * 2 ** max(attempts - 1, 0), self.retry_delay_max))

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The names of the actor arguments that configure the service."""
        return ARGUMENT_NAMES

    @classmethod
    def from_arguments(cls, *args: Any, **arguments: Any) -> ServiceConfig:
        """Validate the service's arguments (see :data:`ARGUMENTS`; the signature is :data:`SIGNATURE`).

        Raises:
            ConfigError: An argument is missing, unknown or invalid; the message names it.
        """
        try:
            bound = SIGNATURE.bind(*args, **arguments)
        except TypeError as exc:
            raise ConfigError(f"arguments: {exc}") from None
        given = {a.name: bound.arguments.get(a.name, a.default) for a in ARGUMENTS}
        values = {a.name: a.parse(given[a.name]) for a in ARGUMENTS}
        return cls._assemble(**values)

    @classmethod
    def _assemble(
        cls,
        *,
        save_template: str,
        object_selector: str,
        event_name: str,
        rule: RuleLike,
        columns: tuple[tuple[str, ...], dict[str, pa.DataType]],
        default_metadata: dict[str, Any],
        path_key: str,
        state_dir: Path,
        allowed_roots: tuple[Path, ...],
        output_root: str | None,
        journal: str | None,
        storage_options: dict[str, Any],
        claim_runs: bool,
        format: OutputFormat,
        partition_by: tuple[str, ...],
        manifest_root: str | None,
        follow: bool,
        **scalars: Any,
    ) -> ServiceConfig:
        """The rules that tie arguments together, on values each already validated alone."""
        metadata = dict(default_metadata)
        root = output_root if output_root is not None else metadata.get("output_root")
        if not root:
            raise ConfigError("output_root is required (as an argument or default_metadata['output_root'])")
        bucket_root = object_root(str(root))
        root_path: Path | str = bucket_root if bucket_root else Path(os.path.abspath(local_root(str(root))))
        metadata.setdefault("output_root", str(root_path))
        if storage_options and bucket_root is None:
            raise ConfigError("storage_options are for an s3:// output_root")
        if bucket_root is not None:
            require_extra("boto3", "s3", f"output_root {root}")
        if journal and "://" in journal:
            require_extra("psycopg", "postgres", "a postgresql:// journal")
        if claim_runs and journal and "://" in journal:
            raise ConfigError(
                "claim_runs is for fleets that share only a filesystem; a PostgreSQL journal already gives "
                "each run to one actor, with fencing: drop claim_runs"
            )
        PathTemplate(save_template, root_path)
        names, types = columns
        if format.is_table:
            require_extra("deltalake", "delta", 'format "delta"')
            if TABLE_RUN_COLUMN in names:
                raise ConfigError(f"columns: {TABLE_RUN_COLUMN!r} is the column every table row carries its run in")
        elif partition_by:
            raise ConfigError('partition_by is for format "delta"; file outputs are partitioned by save_template')
        if follow and not format.is_table:
            raise ConfigError(f'follow needs format "delta" (chunks are committed to tables), not {format.value!r}')
        outside = [name for name in partition_by if name not in names]
        if outside:
            raise ConfigError(f"partition_by: {outside} must be among columns {list(names)}")
        manifests: Path | str | None = None
        if manifest_root is not None:
            manifests = _manifest_root(manifest_root, root_path)
        elif not format.is_table:
            default_manifest_root(root_path)  # a root with no parent needs manifest_root: say so at start
        return cls(
            save_template=save_template,
            output_root=root_path,
            object_selector=object_selector,
            event_name=event_name,
            rule=rule,
            columns=names,
            label_types=types,
            default_metadata=metadata,
            path_key=path_key,
            state_dir=state_dir,
            allowed_roots=allowed_roots,
            journal=journal,
            storage_options=storage_options,
            claim_runs=claim_runs,
            format=format,
            partition_by=partition_by,
            manifest_root=manifests,
            follow=follow,
            **scalars,
        )


def default_manifest_root(output_root: Path | str) -> Path | str:
    """``<output_root>.manifests``: beside ``output_root``, so a scan of it sees only data.

    Raises:
        ConfigError: ``output_root`` is a bucket or filesystem root, which has nothing beside it.
    """
    text = str(output_root).rstrip("/")
    bucket = object_root(text)
    if bucket is not None:
        if "/" not in bucket[len("s3://") :]:
            raise ConfigError(f"output_root {output_root} is a whole bucket: give manifest_root (an s3:// prefix)")
        return f"{text}.manifests"
    path = Path(text)
    if path.parent == path:
        raise ConfigError(f"output_root {output_root} is the filesystem root: give manifest_root")
    return path.with_name(path.name + ".manifests")


def _manifest_root(value: str, output_root: Path | str) -> Path | str:
    """Validate ``manifest_root``: in the same store as ``output_root``, and not inside it."""
    bucket = object_root(value)
    root_bucket = object_root(str(output_root))
    if (bucket is None) != (root_bucket is None):
        raise ConfigError("manifest_root must be in the same store as output_root (both local, or both s3://)")
    if bucket is not None:
        inside = f"{bucket.rstrip('/')}/".startswith(f"{str(output_root).rstrip('/')}/")
        location: Path | str = bucket.rstrip("/")
    else:
        location = Path(os.path.abspath(local_root(value)))
        inside = location == output_root or Path(str(output_root)) in location.parents
    if inside:
        raise ConfigError(f"manifest_root {value} must be outside output_root {output_root}, or scans of it break")
    return location


# The classmethod's real signature, for BOSS-like callers and ``inspect.signature``.
ServiceConfig.from_arguments.__func__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD), *SIGNATURE.parameters.values()]
)
