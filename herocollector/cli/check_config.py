"""``herocollector check-config FILE.json``: check a BOSS config of the collector actor without starting it.

What a start would find out one problem at a time, in the BOSS log, is reported at once, one
line per problem naming the argument:

* the document itself (JSON, ``_id``, ``classname``, ``arguments``); a config for another class
  (the demo logger's, say) is said to be one, and not checked further;
* every argument on its own (each :data:`herocollector.arguments.ARGUMENTS` entry's ``parse``),
  unknown and missing ones, then the rules that tie them together
  (:meth:`herocollector.config.ServiceConfig.from_arguments`);
* ``save_template`` rendered for every stream of a sample run (``--run PATH``), with the
  variables the actor gives it;
* the folders: ``state_dir``, a local ``output_root`` and (for the file formats) the manifest
  root (``manifest_root``, by default ``<output_root>.manifests``) writable (or creatable),
  ``allowed_roots`` readable;
* the ``journal`` (a PostgreSQL URL is connected to) and an ``s3://`` ``output_root`` (its
  endpoint is reached and the bucket looked up, and the manifest root's if it is another).

Nothing is created or changed. Exit status 0 when nothing was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from herocollector.cli.common import PROG, Subparsers
from herocollector.errors import CollectorError

NAME = "check-config"
ACTOR_CLASSES = ("herocollector.CollectorArchiver", "herocollector.actor.archiver.CollectorArchiver")
"""The ``classname`` values that start the collector actor."""
CONNECT_SECONDS = 5
"""How long the journal and the S3 endpoint are given to answer."""


@dataclass
class Findings:
    """The problems found, each naming the argument (or ``config`` for the document itself)."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, argument: str, message: str) -> None:
        """Record a problem with ``argument`` (the actor would fail, or do nothing useful)."""
        self.problems.append((argument, message))

    def warn(self, argument: str, message: str) -> None:
        """Record something the actor copes with but the operator should know (exit status stays 0)."""
        self.warnings.append((argument, message))


def register(subparsers: Subparsers) -> None:
    """Add ``check-config`` to the ``herocollector`` parser."""
    check = subparsers.add_parser(
        NAME,
        help="check a BOSS config of the collector actor without starting anything",
        description=(
            "Check a BOSS config (JSON) of the collector actor: every argument, the template (rendered for the "
            "streams of --run), the folders and their permissions, the journal (connected to) and an s3:// "
            "output_root (reached). Prints the resolved configuration and one line per problem; nothing is "
            "created."
        ),
        epilog="Exit status: 0 no problem found, 1 problems (one line each, naming the argument).",
    )
    check.add_argument("config", metavar="FILE.json", help="the BOSS config file")
    check.add_argument("--run", metavar="PATH", help="a logger directory whose streams the template is rendered for")
    check.add_argument("--json", action="store_true", help="print the resolved configuration and problems as JSON")


def _load(path: Path, findings: Findings) -> dict[str, Any] | None:
    """The config's ``arguments``, or None (with a finding) when the document is not a collector config."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        findings.add("config", f"cannot read {path}: {exc.strerror or exc}")
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        findings.add("config", f"{path} is not JSON: {exc}")
        return None
    if not isinstance(document, dict):
        findings.add("config", f"{path} must hold a JSON object with _id, classname and arguments")
        return None
    classname = document.get("classname")
    if classname not in ACTOR_CLASSES:
        findings.add(
            "classname",
            f"this config starts {classname!r}, not the collector actor ({ACTOR_CLASSES[0]}); check-config checks "
            "collector configs only",
        )
        return None
    if not isinstance(document.get("_id"), str) or not document["_id"]:
        findings.add("_id", "the config needs an _id (the actor's HERO name), a non-empty string")
    arguments = document.get("arguments", {})
    if not isinstance(arguments, dict):
        findings.add("arguments", f"must be a JSON object, got {type(arguments).__name__}")
        return None
    return arguments


def _check_arguments(arguments: dict[str, Any], findings: Findings) -> Any:
    """Each argument alone, then together; the :class:`ServiceConfig`, or None if any argument is wrong."""
    from herocollector.arguments import ARGUMENT_NAMES, ARGUMENTS
    from herocollector.config import ServiceConfig

    for name in sorted(set(arguments) - set(ARGUMENT_NAMES)):
        findings.add(name, "unknown argument (see docs/configuration.md for the arguments)")
    alone_ok = True
    for argument in ARGUMENTS:
        if argument.name not in arguments:
            if argument.required:
                findings.add(argument.name, "required, but not given")
                alone_ok = False
            continue
        try:
            argument.parse(arguments[argument.name])
        except CollectorError as exc:
            findings.add(argument.name, exc.reason)
            alone_ok = False
        except Exception as exc:  # noqa: BLE001 - a parser tripping over a value of a type it did not expect
            findings.add(argument.name, f"invalid value {arguments[argument.name]!r}: {type(exc).__name__}: {exc}")
            alone_ok = False
    if not alone_ok or set(arguments) - set(ARGUMENT_NAMES):
        return None
    try:
        return ServiceConfig.from_arguments(**arguments)
    except CollectorError as exc:
        reason = exc.reason
        named = next((a for a in ARGUMENT_NAMES if reason.startswith(a)), None)
        findings.add(named or "arguments", reason)
        return None


def _check_template(config: Any, run: Path, findings: Findings) -> None:
    """Render ``save_template`` for every stream of ``run``, as the actor's workers do."""
    from herocollector.output.paths import PathTemplate, Trusted
    from herocollector.run.catalogue import load_streams

    try:
        streams = load_streams(run)
    except (CollectorError, OSError) as exc:
        findings.add("--run", f"cannot read the streams of {run}: {exc}")
        return
    template = PathTemplate(config.save_template, config.output_root)
    rendered: set[str] = set()
    for stream in streams:
        context = {  # default_metadata is passed as trusted, as the workers do
            **stream.labels,
            "source_name": "check-config",
            "logger_path": Trusted(str(run)),
            "logger_name": run.name,
        }
        try:
            rendered.add(str(template.render_location(context, trusted=config.default_metadata)))
        except CollectorError as exc:
            findings.add("save_template", f"stream {stream.stream_id} of {run}: {exc.reason}")
    if rendered:
        findings.notes.append(f"save_template renders {len(streams)} stream(s) of {run} into {len(rendered)} file(s):")
        findings.notes.extend(f"  {path}" for path in sorted(rendered))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(argument: str, path: Path, findings: Findings) -> None:
    """``path`` is a writable folder, or the nearest existing folder above it is (so it can be created)."""
    if path.exists():
        if not path.is_dir():
            findings.add(argument, f"{path} is not a folder")
        elif not os.access(path, os.W_OK | os.X_OK):
            findings.add(argument, f"{path} is not writable by this user (uid {os.getuid()})")
        return
    parent = _nearest_existing(path)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        findings.add(argument, f"{path} does not exist and cannot be created: {parent} is not a writable folder")


def _check_paths(config: Any, findings: Findings) -> None:
    _writable("state_dir", Path(config.state_dir), findings)
    if isinstance(config.output_root, Path):
        _writable("output_root", config.output_root, findings)
        if not config.format.is_table:
            _writable("manifest_root", Path(config.manifest_location), findings)
    if not config.allowed_roots:
        findings.warn("allowed_roots", "empty: the actor refuses every run (no folder is allowed)")
    for root in config.allowed_roots:
        if not root.exists():
            findings.warn("allowed_roots", f"{root} does not exist (yet): runs there are refused until it does")
        elif not root.is_dir():
            findings.add("allowed_roots", f"{root} is not a folder")
        elif not os.access(root, os.R_OK | os.X_OK):
            findings.add("allowed_roots", f"{root} is not readable by this user (uid {os.getuid()})")
    if config.journal and "://" not in config.journal:
        _writable("journal", Path(config.journal).parent, findings)


def _check_journal(config: Any, findings: Findings) -> None:
    """Connect to a PostgreSQL journal (a SQLite one is a file under a folder checked with the paths)."""
    if not (config.journal and "://" in config.journal):
        return
    import psycopg

    try:
        with psycopg.connect(config.journal, connect_timeout=CONNECT_SECONDS) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        findings.add("journal", f"cannot connect to {_without_password(config.journal)}: {reason}")


def _check_s3(config: Any, findings: Findings) -> None:
    """Reach the S3 endpoint (TCP first, so an unreachable one fails in seconds) and look the bucket up."""
    if isinstance(config.output_root, Path):
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from herocollector.output.s3client import s3_client

    bucket = str(config.output_root)[5:].split("/", 1)[0]
    try:
        client = s3_client(config.storage_options)
    except CollectorError as exc:
        findings.add("storage_options", exc.reason)
        return
    endpoint = urlsplit(client.meta.endpoint_url)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        findings.add(
            "storage_options",
            f"cannot reach the S3 endpoint {client.meta.endpoint_url} of {config.output_root}: {exc.strerror or exc}",
        )
        return
    buckets = {bucket: "output_root"}
    if not config.format.is_table:
        buckets.setdefault(str(config.manifest_location)[5:].split("/", 1)[0], "manifest_root")
    for name, argument in buckets.items():
        try:
            client.head_bucket(Bucket=name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            findings.add(argument, f"bucket {name!r} at {client.meta.endpoint_url}: {code} ({exc})")
        except BotoCoreError as exc:
            findings.add("storage_options", f"S3 endpoint {client.meta.endpoint_url}: {exc}")
            return


def _resolved(config: Any) -> dict[str, Any]:
    """The configuration as the actor would run it, as JSON-friendly values (a journal's password hidden)."""
    resolved: dict[str, Any] = {}
    for item in fields(config):
        value = getattr(config, item.name)
        if item.name == "label_types":
            value = {k: str(v) for k, v in value.items()}
        elif item.name == "journal" and value and "://" in value:
            value = _without_password(value)
        elif item.name == "storage_options":
            value = {k: ("***" if "secret" in k or "token" in k else v) for k, v in value.items()}
        resolved[item.name] = json.loads(json.dumps(value, default=str))
    if not config.format.is_table:
        resolved["manifest_location"] = str(config.manifest_location)
    resolved["journal_location"] = (
        _without_password(config.journal_location) if "://" in config.journal_location else config.journal_location
    )
    return resolved


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``herocollector check-config``: see :func:`register`."""
    path = Path(args.config)
    findings = Findings()
    config = None
    arguments = _load(path, findings)
    if arguments is not None:
        config = _check_arguments(arguments, findings)
    if config is not None:
        _check_paths(config, findings)
        if args.run:
            _check_template(config, Path(os.path.abspath(args.run)), findings)
        _check_journal(config, findings)
        _check_s3(config, findings)
    resolved = None if config is None else _resolved(config)
    if args.json:
        report = {
            "config": str(path),
            "ok": not findings.problems,
            "resolved": resolved,
            "problems": [{"argument": a, "message": m} for a, m in findings.problems],
            "warnings": [{"argument": a, "message": m} for a, m in findings.warnings],
            "notes": findings.notes,
        }
        out.print_json(json.dumps(report))
    else:
        if resolved is not None:
            table = Table(title=f"{path}: the configuration the actor would run with", show_edge=False, pad_edge=False)
            table.add_column("argument")
            table.add_column("value")
            for name, value in resolved.items():
                table.add_row(name, json.dumps(value))
            out.print(table)
        for note in findings.notes:
            out.print(note, soft_wrap=True)
        if not findings.problems:
            out.print(f"{path}: no problem found", soft_wrap=True)
    for argument, message in findings.warnings:
        err.print(f"{PROG}: warning: {path}: {argument}: {message}", soft_wrap=True)
    for argument, message in findings.problems:
        err.print(f"{PROG}: error: {path}: {argument}: {message}", soft_wrap=True)
    return 1 if findings.problems else 0
