"""The Delta tables below an output root, and what each holds: what ``herocollector tables`` lists.

A table is a folder (or ``s3://`` prefix) with a ``_delta_log``; :func:`find_tables` walks a
local root without following symlinks and without descending into a table, or lists an S3
prefix. :func:`describe` reads a table's snapshot (rows, files and bytes from its add actions,
partition columns) and its last commit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from herocollector.errors import CollectorError
from herocollector.output.delta import METADATA_PREFIX, open_table
from herocollector.output.paths import object_root

DELTA_LOG = "_delta_log"


@dataclass(frozen=True)
class TableSummary:
    """One table, as ``herocollector tables`` shows it.

    Attributes:
        table: Its location.
        rows: Rows in its current version.
        files: Data files in its current version.
        bytes: Their size.
        version: Its current version (``versions - 1``).
        partition_by: Its partition columns.
        last_commit: When the last commit was made (ISO 8601, UTC), or None.
        last_operation: What it was (``WRITE``, ``OPTIMIZE``, ``DELETE`` …).
        last_run: The run the last commit wrote, if herocollector wrote it.
    """

    table: str
    rows: int
    files: int
    bytes: int
    version: int
    partition_by: tuple[str, ...]
    last_commit: str | None
    last_operation: str | None
    last_run: str | None

    @property
    def versions(self) -> int:
        """How many versions it has had."""
        return self.version + 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {**asdict(self), "partition_by": list(self.partition_by), "versions": self.versions}


def find_tables(root: str, options: Mapping[str, Any]) -> list[str]:
    """The Delta tables at or below ``root`` (a folder or an ``s3://`` prefix), in name order.

    Raises:
        CollectorError: ``root`` is not a folder (locally).
    """
    if object_root(root) is not None:
        return _find_on_s3(root.rstrip("/"), options)
    top = Path(os.path.abspath(root))
    if not top.is_dir():
        raise CollectorError("not a folder", top)
    found: list[str] = []
    for folder, subfolders, _ in os.walk(top, followlinks=False):
        if DELTA_LOG in subfolders:
            found.append(folder)
            subfolders.clear()  # a table's partitions are no tables of their own
            continue
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
    return sorted(found)


def _find_on_s3(root: str, options: Mapping[str, Any]) -> list[str]:
    """The tables below an S3 prefix: the prefixes of the ``_delta_log/`` keys."""
    from herocollector.output.s3client import s3_client

    bucket, _, prefix = root[len("s3://") :].partition("/")
    client = s3_client(options)
    listed = prefix.rstrip("/") + "/" if prefix else ""
    found: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listed):
        for item in page.get("Contents", []):
            head, marker, _ = item["Key"].partition(f"{DELTA_LOG}/")
            if marker and (head == "" or head.endswith("/")):
                found.add(f"s3://{bucket}/{head.rstrip('/')}" if head else f"s3://{bucket}")
    return sorted(found)


def describe(table: str, options: Mapping[str, Any]) -> TableSummary:
    """A table's rows, files, size, version, partitions and last commit.

    Raises:
        CollectorError: No Delta table is there.
    """
    delta_table = open_table(table, options)
    if delta_table is None:
        raise CollectorError("no Delta table is there", table)
    actions = pa.table(delta_table.get_add_actions(flatten=True))
    rows = sum(v or 0 for v in actions["num_records"].to_pylist()) if actions.num_rows else 0
    size = sum(v or 0 for v in actions["size_bytes"].to_pylist()) if actions.num_rows else 0
    history = delta_table.history(limit=1)
    last = history[0] if history else {}
    stamp = last.get("timestamp")
    when = datetime.fromtimestamp(stamp / 1000, UTC).isoformat() if isinstance(stamp, int | float) else None
    run = last.get(f"{METADATA_PREFIX}run")
    return TableSummary(
        table=table,
        rows=int(rows),
        files=actions.num_rows,
        bytes=int(size),
        version=int(delta_table.version()),
        partition_by=tuple(delta_table.metadata().partition_columns),
        last_commit=when,
        last_operation=last.get("operation"),
        last_run=str(run) if run is not None else None,
    )
