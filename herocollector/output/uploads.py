"""The record of an S3 store's multipart uploads in progress, so that a restart aborts what a killed process left.

S3 keeps, and bills, the parts of a multipart upload that is neither completed nor aborted until
a lifecycle rule expires them. A store aborts its upload when publishing fails in the process;
a ``kill -9`` (or a power cut) leaves the upload behind. ``ListMultipartUploads`` tells only the
key, the upload id, the initiator and the owner (the credentials, which the actors of a fleet
may share), so a listing cannot tell the upload that a dead process left from one that a live
actor is sending right now, even of the same key. Hence each store records its own uploads:

* the bucket, key and upload id, committed (SQLite, ``synchronous=FULL``) as soon as
  ``CreateMultipartUpload`` returns and before the first part is sent;
* removed once the upload is completed or aborted.

The file, :data:`UPLOADS_FILE`, lives in the store's staging folder under ``state_dir``, which
one process holds at a time (its lock). A record written by another process than this one
(:data:`PROCESS`) is therefore an upload that nobody will finish: the store aborts it if it is
still listed (:meth:`herocollector.output.stores.S3Store.abort_abandoned`). Uploads of other
actors are never recorded here, so they are never touched.

Not covered: a kill in the instant between S3 creating the upload and the record's commit, and
a ``state_dir`` that is lost; the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule
covers those (see ``docs/operations.md``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UPLOADS_FILE = "_multipart-uploads.sqlite3"
"""The record's name in the staging folder (no bucket name starts with ``_``, so it meets no staged file)."""

ABANDONED_SWEEP = 300.0
"""Seconds between two rounds of :func:`abort_abandoned` after the one at start (they retry what failed)."""

PROCESS = f"{os.getpid()}-{uuid.uuid4().hex}"
"""This process among those that used a ``state_dir``: records of any other one are abandoned."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    bucket    TEXT NOT NULL,
    key       TEXT NOT NULL,
    process   TEXT NOT NULL,
    started   REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Upload:
    """One recorded multipart upload.

    Attributes:
        bucket: Its bucket.
        key: Its object key.
        upload_id: What S3 named it.
        process: The process that started it (:data:`PROCESS` of that process).
        started: When it was recorded (seconds since the epoch).
    """

    bucket: str
    key: str
    upload_id: str
    process: str
    started: float

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


class UploadRecord:
    """The multipart uploads in progress of the stores of one ``state_dir`` (SQLite, any thread).

    Each call opens its own connection: there are two writes per multipart upload (of more than
    64 MiB), so a connection kept open would buy nothing and would have to be closed by someone.

    Args:
        file: The database file; created with its folder on the first :meth:`add`.
    """

    def __init__(self, file: Path) -> None:
        self.file = file

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.file, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA synchronous=FULL")  # the record must survive a power cut, not only a kill
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def add(self, bucket: str, key: str, upload_id: str) -> None:
        """Record an upload of this process, durably.

        Raises:
            sqlite3.Error: It cannot be recorded.
            OSError: The folder cannot be created.
        """
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute(
                "INSERT OR REPLACE INTO uploads (upload_id, bucket, key, process, started) VALUES (?, ?, ?, ?, ?)",
                (upload_id, bucket, key, PROCESS, time.time()),
            )

    def remove(self, upload_id: str) -> None:
        """Forget an upload that was completed or aborted (never raises: a stale record is dropped later)."""
        if not self.file.exists():
            return
        try:
            with closing(self._connect()) as db:
                db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        except sqlite3.Error as exc:
            # The upload is finished either way; the next sweep finds it no longer listed and drops the record.
            log.warning(f"cannot forget the finished multipart upload {upload_id} in {self.file}: {exc}")

    def abandoned(self) -> list[Upload]:
        """The uploads that other processes (earlier holders of the ``state_dir``) recorded, oldest first.

        Raises:
            sqlite3.Error: The record cannot be read.
        """
        return self._select("WHERE process != ?", PROCESS)

    def all(self) -> list[Upload]:
        """Every recorded upload, this process's included, oldest first.

        Raises:
            sqlite3.Error: The record cannot be read.
        """
        return self._select("")

    def _select(self, where: str, *params: str) -> list[Upload]:
        if not self.file.exists():
            return []  # no multipart upload was ever started here: a sweep creates nothing
        with closing(self._connect()) as db:
            rows = db.execute(
                f"SELECT bucket, key, upload_id, process, started FROM uploads {where} ORDER BY started", params
            ).fetchall()
        return [Upload(str(b), str(k), str(u), str(p), float(s)) for b, k, u, p, s in rows]


def abort_abandoned(client: Any, record: UploadRecord) -> list[str]:
    """Abort the uploads in ``record`` that earlier processes left and that S3 still lists (never raises).

    Exact by construction: only the upload ids that this ``state_dir`` recorded are aborted,
    never another actor's upload of the same bucket, prefix or key. A record whose upload is no
    longer listed (completed, or expired by a lifecycle rule) is dropped; one that cannot be
    aborted now (S3 unreachable) is kept for the next round (every :data:`ABANDONED_SWEEP` s).

    Args:
        client: A boto3 S3 client.
        record: The store's record of its uploads.

    Returns:
        The ``s3://bucket/key`` of every upload aborted.
    """
    try:
        abandoned = record.abandoned()
    except sqlite3.Error as exc:
        log.warning(f"cannot read the record of multipart uploads {record.file}: {exc}")
        return []
    aborted = []
    for upload in abandoned:
        try:
            if _abort_listed(client, upload):
                log.info(
                    f"aborted the incomplete multipart upload of {upload.uri} (upload id {upload.upload_id}) "
                    "that an earlier process of this service left"
                )
                aborted.append(upload.uri)
            else:
                log.debug(f"the recorded multipart upload of {upload.uri} is no longer listed: record dropped")
            record.remove(upload.upload_id)
        except Exception as exc:  # noqa: BLE001 - an upload that cannot be aborted now must not keep the others
            log.warning(
                f"cannot abort the incomplete multipart upload of {upload.uri} (upload id {upload.upload_id}), "
                f"trying again in {ABANDONED_SWEEP:.0f} s: {exc}"
            )
    return aborted


def _abort_listed(client: Any, upload: Upload) -> bool:
    """Abort ``upload`` if S3 still lists it as in progress; whether it did."""
    from botocore.exceptions import ClientError

    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=upload.bucket, Prefix=upload.key)
    listed = any(
        (found.get("Key"), found.get("UploadId")) == (upload.key, upload.upload_id)
        for page in pages
        for found in page.get("Uploads", [])
    )
    if not listed:
        return False  # an id S3 does not list is never aborted: what it completed stays either way
    try:
        client.abort_multipart_upload(Bucket=upload.bucket, Key=upload.key, UploadId=upload.upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
            return False  # gone between the listing and the abort
        raise
    return True
