"""``herocollector tables``: the Delta tables below an output root, with their rows, files, versions and last commit.

``OUTPUT_ROOT`` is a local folder or an ``s3://bucket/prefix`` (reached with ``--storage-option
KEY=VALUE``, the actor's ``storage_options``). Human output by default, ``--json`` on request.
Exit status 1 when the root cannot be read or holds no table.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from herocollector.cli import common
from herocollector.cli.common import PROG, Subparsers
from herocollector.config import require_extra
from herocollector.output.delta_catalog import describe, find_tables
from herocollector.output.paths import object_root

NAME = "tables"


def _below(table: str, root: str) -> str:
    """A table's location below the root it was found under (``.`` for the root itself)."""
    top = root.rstrip("/") if object_root(root) is not None else os.path.abspath(root)
    rest = table[len(top) :].lstrip("/") if table.startswith(top) else table
    return rest or "."


def register(subparsers: Subparsers) -> None:
    """Add ``tables`` to the ``herocollector`` parser."""
    tables = subparsers.add_parser(
        NAME,
        help="list the Delta tables below an output root: rows, files, versions, last commit",
        description=(
            "List the Delta tables (folders with a _delta_log) at or below OUTPUT_ROOT, a folder or an "
            "s3://bucket/prefix, with their rows, data files, size, versions, partition columns and last commit."
        ),
    )
    tables.add_argument("root", metavar="OUTPUT_ROOT", help="a folder or s3://bucket/prefix")
    common.storage_option_argument(
        tables, "how to reach an s3:// root (endpoint_url, region, access_key_id, secret_access_key ...); repeatable"
    )
    tables.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector tables``: see :func:`register`."""
    require_extra("deltalake", "delta", f"{PROG} tables")
    if object_root(args.root) is not None:
        require_extra("boto3", "s3", f"{PROG} tables {args.root}")
    options: dict[str, Any] = dict(args.storage_options)
    summaries = [describe(table, options) for table in find_tables(args.root, options)]
    if args.json:
        out.print_json(json.dumps({"root": args.root, "tables": [s.to_dict() for s in summaries]}))
    elif summaries:
        table = Table(title=f"Delta tables below {escape(args.root)}", title_justify="left", expand=False)
        for column in ("table", "rows", "files", "size", "versions", "partitioned by", "last commit"):
            numeric = column in ("rows", "files", "size", "versions")
            table.add_column(column, justify="right" if numeric else "left", no_wrap=column == "table")
        for s in summaries:
            last = " ".join(x for x in (s.last_commit, s.last_operation) if x) or "-"
            if s.last_run:
                last += f" ({s.last_run})"
            table.add_row(
                escape(_below(s.table, args.root)),
                f"{s.rows:,}",
                f"{s.files:,}",
                common.size(s.bytes),
                f"{s.versions:,}",
                ", ".join(s.partition_by) or "-",
                escape(last),
            )
        out.print(table)
    if not summaries:
        err.print(
            f"{PROG}: no Delta table (a folder with a _delta_log) at or below {escape(args.root)}", soft_wrap=True
        )
        return 1
    return 0
