"""Where outputs are published: a local folder, or an S3-compatible object store.

Every output is first written and fsynced as a local file (:class:`~herocollector.output.files.OutputFile`),
then published under its final name, atomically and without overwriting another run's data:

* **local folder** (``/data/collected``, ``file:///data/collected``): ``os.link`` of the
  temporary file to the final name, which fails if the name is taken; a file that is the
  job's own from an earlier attempt is replaced with ``os.replace``;
* **object store** (``s3://bucket/prefix``): the staged file is uploaded with a conditional
  create (``If-None-Match: *``), as one ``PutObject`` or, for large files, a multipart upload
  whose completion is conditional. Nothing is ever written through a stream that publishes
  on close. A multipart upload is aborted if it fails, and recorded in the staging folder
  until it ends, so that the next start aborts one that a killed process left
  (:mod:`herocollector.output.uploads`). An object that exists already is kept: if it holds the same bytes for the same
  run (an earlier attempt of the job), it is adopted; otherwise the job fails with an
  output collision.

A local store links a run's files without syncing their folder each time:
:meth:`OutputStore.sync_folders`, called once after the last of them, syncs each folder once.
Whatever a thread published and did not sync yet is synced before it creates a small object
(:meth:`OutputStore.put_bytes`, the manifest): a commit record never exists before the files it
lists are durable.

Each published object carries its provenance as metadata (logger path, job, fencing token,
SHA-256), so collisions and adoptions are decided without reading the data.

Each store publishes by itself, from the finished temporary file: nothing is handed back to
the :class:`~herocollector.output.files.OutputFile`. A failed publish leaves no temporary file
(one that cannot be removed yet, in a folder turned read-only, is removed by the next attempt)
and raises the original cause as a :class:`~herocollector.errors.PublishError` naming the final
location. :meth:`OutputStore.verify` and :meth:`OutputStore.remove` let the runner adopt a run
whose manifest is complete and true, or replace a stale one.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from herocollector.errors import ConfigError, OutputError, PublishError
from herocollector.output.files import (
    OutputFile,
    discard,
    fsync_dir,
    link_into_place,
    read_provenance,
    remove_stale_temporaries,
    temporary_name,
)
from herocollector.output.paths import object_root
from herocollector.output.s3client import s3_client
from herocollector.output.uploads import UPLOADS_FILE, UploadRecord, abort_abandoned

MULTIPART_THRESHOLD = 64 << 20
"""Files larger than this are uploaded in parts (the completion is the conditional create)."""
PART_SIZE = 16 << 20
MAX_SMALL_OBJECT = 64 << 20
"""The largest manifest read back (one of a run with very many outputs is a few MB)."""
_META = "herocollector-"
_unsynced = threading.local()
"""Per thread: the folders a :class:`LocalStore` linked files into and did not sync yet."""


@dataclass(frozen=True)
class Provenance:
    """Who published an output.

    Attributes:
        logger_path: The run.
        job: The journal job.
        token: The fencing token the job held.
        sha256: The bytes' checksum (empty where it is not recorded).
    """

    logger_path: str
    job: int = 0
    token: int = 0
    sha256: str = ""


class OutputStore(ABC):
    """Publishes staged output files at their final locations."""

    root: str
    """What ``{{ output_root }}`` renders."""

    @abstractmethod
    def staging_path(self, location: Path | str) -> Path:
        """The local path whose temporary file :class:`OutputFile` writes for ``location``."""

    @abstractmethod
    def provenance(self, location: Path | str) -> Provenance | None:
        """Who published ``location``, None if nothing is there (a foreign file: empty logger path)."""

    @abstractmethod
    def publish(self, file: OutputFile, location: Path | str, provenance: Provenance, replace_own: bool) -> str:
        """Publish a finished file; the temporary file is gone afterwards, whatever happens.

        Args:
            file: The finished output.
            location: Its final location.
            provenance: What to record with it.
            replace_own: An existing output there is this job's own from an earlier attempt
                (its provenance names the same run and job): replace it (local folder) or
                adopt it (object store, where nothing is overwritten).

        Returns:
            The SHA-256 of what is published at ``location`` now.

        Raises:
            OutputError: The location holds another run's (or a foreign) output.
        """

    def sync_folders(self, locations: Iterable[Path | str]) -> None:  # noqa: B027 - an upload is durable when it returns
        """Make the publishes of ``locations`` durable; called once after a run's files are published.

        A local store links each file without syncing its folder, and syncs each folder once
        here; an object store has nothing to do.

        Raises:
            PublishError: A folder cannot be synced, naming a location in it.
        """

    @abstractmethod
    def put_bytes(self, location: Path | str, data: bytes, provenance: Provenance) -> bool:
        """Create a small object (a manifest) atomically, unless one exists.

        Returns:
            True if created; False if something was there already (left untouched).
        """

    @abstractmethod
    def read_bytes(self, location: Path | str) -> bytes | None:
        """The contents of a small object, or None if it does not exist."""

    def tidy(self, location: Path | str) -> list[Path]:
        """Remove the temporary files a dead writer of this host left for ``location`` (never raises).

        Called for a run adopted as it is, which writes nothing that would remove them otherwise.

        Returns:
            The files removed.
        """
        return remove_stale_temporaries(self.staging_path(location))

    @abstractmethod
    def remove(self, location: Path | str) -> None:
        """Remove an object (a stale manifest), durably; nothing there is fine.

        Raises:
            PublishError: It cannot be removed.
        """

    def abort_abandoned(self) -> None:  # noqa: B027 - deliberately empty: only an object store has uploads
        """Abort the uploads in progress that an earlier process of this service left (never raises).

        The service calls it at start and then every few minutes; only an object store has such
        uploads, and a store without them has nothing to do.
        """

    @abstractmethod
    def verify(self, location: Path | str, size: int, sha256: str) -> bool:
        """Whether ``location`` holds exactly ``size`` bytes with this SHA-256.

        A local file is read and hashed again; an object's size and recorded checksum are compared.
        """

    @abstractmethod
    def published(self, location: Path | str, size: int, sha256: str) -> tuple[int, str]:
        """Size and SHA-256 of what is at ``location`` right after a publish that staged ``size``/``sha256``.

        The same figures for a local file (it is the staged file); an object store may have
        adopted an earlier attempt's object instead, whose own figures are returned.
        """


class LocalStore(OutputStore):
    """Outputs in a local (or network-mounted) folder."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def staging_path(self, location: Path | str) -> Path:
        """See :meth:`OutputStore.staging_path`."""
        return Path(location)

    def _pending(self) -> dict[Path, Path]:
        """The folders this thread linked files into and did not sync yet, each with one of those files.

        Kept per thread, not per store: a worker publishes a run and writes its manifest on one
        thread, and the manifest may go through another store (a manifest root of its own).
        """
        pending: dict[Path, Path] | None = getattr(_unsynced, "folders", None)
        if pending is None:
            pending = _unsynced.folders = {}
        return pending

    def provenance(self, location: Path | str) -> Provenance | None:
        """See :meth:`OutputStore.provenance`: anything but a regular file (a symlink, a FIFO) is foreign, unread."""
        path = Path(location)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        except OSError:
            return Provenance("")
        if not stat.S_ISREG(info.st_mode):
            return Provenance("")  # never opened: a FIFO would block the worker
        found = read_provenance(path)
        job = found.get("job", "0")
        return Provenance(found.get("logger_path", ""), int(job) if job.isdigit() else 0)

    def publish(self, file: OutputFile, location: Path | str, provenance: Provenance, replace_own: bool) -> str:
        """See :meth:`OutputStore.publish`: a link (never overwrites) or, for the job's own file, a rename.

        The folder is not synced here: :meth:`sync_folders` (or the next :meth:`put_bytes` of this
        thread) does it once for all the files linked into it.
        """
        final = Path(location)
        link_into_place(file.temporary, final, replace_own, sync=False)
        self._pending().setdefault(final.parent, final)
        return file.sha256

    def sync_folders(self, locations: Iterable[Path | str]) -> None:
        """See :meth:`OutputStore.sync_folders`: one fsync per folder, however many of the files are in it."""
        self._sync(locations, missing_ok=False)

    def _sync(self, locations: Iterable[Path | str], missing_ok: bool) -> None:
        """Sync the folders of ``locations``; with ``missing_ok`` a folder removed since is passed over."""
        folders: dict[Path, Path] = {}
        for location in locations:
            folders.setdefault(Path(location).parent, Path(location))
        pending = self._pending()
        for folder, location in folders.items():
            # Forgotten before the attempt: a folder that cannot be synced fails the write it belongs
            # to, once, and never a later one of this thread (a worker goes on to other runs).
            pending.pop(folder, None)
            try:
                fsync_dir(folder)
            except FileNotFoundError as exc:
                if missing_ok:
                    continue  # removed since (an aborted write's folder): nothing in it is left to make durable
                raise PublishError("syncing the folder of", location, exc) from exc
            except OSError as exc:
                raise PublishError("syncing the folder of", location, exc) from exc

    def put_bytes(self, location: Path | str, data: bytes, provenance: Provenance) -> bool:
        """See :meth:`OutputStore.put_bytes`.

        Raises:
            PublishError: It cannot be written (a full disk, a read-only folder), naming ``location``.
        """
        final = Path(location)
        self._sync(list(self._pending().values()), missing_ok=True)  # normally none: the pipeline synced its own
        staged = temporary_name(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(final)
            with open(staged, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(staged, final)
        except FileExistsError:
            return False
        except OSError as exc:
            raise PublishError("writing", final, exc) from exc
        finally:
            discard(staged)
        try:
            fsync_dir(final.parent)
        except OSError as exc:
            raise PublishError("syncing the folder of", final, exc) from exc
        return True

    def read_bytes(self, location: Path | str) -> bytes | None:
        """See :meth:`OutputStore.read_bytes`: a regular file of at most :data:`MAX_SMALL_OBJECT` bytes.

        Raises:
            OutputError: Something else is there (a symlink, a FIFO, a folder, a huge file).
        """
        path = Path(location)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputError(f"cannot be read as a small file: {exc.strerror}", path) from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise OutputError("is not a regular file", path)
            if info.st_size > MAX_SMALL_OBJECT:
                raise OutputError(f"is {info.st_size} bytes, more than a manifest can be", path)
            return fh.read(MAX_SMALL_OBJECT + 1)

    def remove(self, location: Path | str) -> None:
        """See :meth:`OutputStore.remove`."""
        path = Path(location)
        try:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass  # the folder is gone too
        except OSError as exc:
            raise PublishError("removing", path, exc) from exc

    def verify(self, location: Path | str, size: int, sha256: str) -> bool:
        """See :meth:`OutputStore.verify`: a regular file (not a link), its size, then its bytes hashed."""
        try:
            fd = os.open(location, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                return False
            digest = hashlib.sha256()
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
            return digest.hexdigest() == sha256

    def published(self, location: Path | str, size: int, sha256: str) -> tuple[int, str]:
        """See :meth:`OutputStore.published`: the staged file is what is published."""
        return size, sha256


class S3Store(OutputStore):
    """Outputs in an S3-compatible bucket, under a prefix.

    Args:
        root: ``s3://bucket/prefix``.
        options: ``storage_options`` (see :func:`s3_client`).
        staging: Local folder for staged files (under ``state_dir``); it also holds the record of
            the multipart uploads in progress (:mod:`herocollector.output.uploads`).

    Attributes:
        uploads: The record of this store's multipart uploads in progress.
    """

    def __init__(self, root: str, options: Mapping[str, Any], staging: Path) -> None:
        self.root = root
        self.bucket = root[5:].split("/", 1)[0]
        self.staging = staging
        self.uploads = UploadRecord(staging / UPLOADS_FILE)
        self._options = dict(options)
        self._local = threading.local()  # boto3 clients are not shared between threads

    @property
    def client(self) -> Any:
        """This thread's S3 client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = s3_client(self._options)
        return client

    def key(self, location: Path | str) -> str:
        """The object key of a location ``s3://bucket/key``."""
        text = str(location)
        prefix = f"s3://{self.bucket}/"
        if not text.startswith(prefix):
            raise OutputError(f"{text!r} is not in the bucket {self.bucket!r}")
        return text[len(prefix) :]

    def staging_path(self, location: Path | str) -> Path:
        """See :meth:`OutputStore.staging_path`."""
        return self.staging / self.bucket / self.key(location)

    def _metadata(self, provenance: Provenance) -> dict[str, str]:
        # Object metadata travels as HTTP headers: ASCII only, so the path is percent-encoded.
        return {
            f"{_META}logger-path": quote(provenance.logger_path, safe="/"),
            f"{_META}job": str(provenance.job),
            f"{_META}token": str(provenance.token),
            f"{_META}sha256": provenance.sha256,
        }

    def provenance(self, location: Path | str) -> Provenance | None:
        """See :meth:`OutputStore.provenance`."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(location))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise OutputError(f"cannot read {location}: {exc}") from None
        meta = head.get("Metadata", {})
        return Provenance(
            unquote(meta.get(f"{_META}logger-path", "")),
            int(meta.get(f"{_META}job", 0) or 0),
            int(meta.get(f"{_META}token", 0) or 0),
            meta.get(f"{_META}sha256", ""),
        )

    def publish(self, file: OutputFile, location: Path | str, provenance: Provenance, replace_own: bool) -> str:
        """See :meth:`OutputStore.publish`."""
        try:
            stamped = Provenance(provenance.logger_path, provenance.job, provenance.token, file.sha256)
            if self._create(file.temporary, location, stamped):
                return file.sha256
            existing = self.provenance(location)
            if (
                replace_own
                and existing is not None
                and (existing.logger_path, existing.job)
                == (
                    provenance.logger_path,
                    provenance.job,
                )
            ):
                return existing.sha256  # an earlier attempt of this job published it: adopt, never overwrite
            owner = (
                existing.logger_path if existing and existing.logger_path else "an object not written by herocollector"
            )
            raise OutputError(
                f"output collision: {location} already holds {owner}; refusing to overwrite it with "
                f"the run {provenance.logger_path} (job {provenance.job})"
            )
        finally:
            discard(file.temporary)

    def _create(self, staged: Path, location: Path | str, provenance: Provenance) -> bool:
        """Upload ``staged`` unless the key exists; False if it existed."""
        from botocore.exceptions import ClientError

        key = self.key(location)
        meta = self._metadata(provenance)
        size = staged.stat().st_size
        try:
            if size <= MULTIPART_THRESHOLD:
                with open(staged, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=meta, IfNoneMatch="*")
            else:
                self._multipart(staged, key, meta)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise OutputError(f"uploading {location} failed: {exc}") from None
        return True

    def _multipart(self, staged: Path, key: str, meta: dict[str, str]) -> None:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=meta)
        upload_id = upload["UploadId"]
        try:
            try:
                # Durable before the first part: from here on, a kill -9 is undone by the next start.
                self.uploads.add(self.bucket, key, upload_id)
            except (sqlite3.Error, OSError) as exc:
                raise PublishError(
                    "recording the multipart upload of", f"s3://{self.bucket}/{key}", exc, self.uploads.file.parent
                ) from exc
            parts = []
            with open(staged, "rb") as fh:
                number = 1
                while chunk := fh.read(PART_SIZE):
                    part = self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    parts.append({"PartNumber": number, "ETag": part["ETag"]})
                    number += 1
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original error matters; the record is retried at the next start
                pass
            else:
                self.uploads.remove(upload_id)
            raise
        self.uploads.remove(upload_id)

    def abort_abandoned(self) -> None:
        """See :meth:`OutputStore.abort_abandoned` and :func:`~herocollector.output.uploads.abort_abandoned`."""
        abort_abandoned(self.client, self.uploads)

    def put_bytes(self, location: Path | str, data: bytes, provenance: Provenance) -> bool:
        """See :meth:`OutputStore.put_bytes`."""
        from botocore.exceptions import ClientError

        digest = hashlib.sha256(data).hexdigest()
        meta = self._metadata(Provenance(provenance.logger_path, provenance.job, provenance.token, digest))
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(location),
                Body=data,
                Metadata=meta,
                IfNoneMatch="*",
                ContentType="application/json",
            )
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):
                return False
            raise OutputError(f"uploading {location} failed: {exc}") from None
        return True

    def read_bytes(self, location: Path | str) -> bytes | None:
        """See :meth:`OutputStore.read_bytes`."""
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key(location))["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise OutputError(f"cannot read {location}: {exc}") from None

    def _head(self, location: Path | str) -> tuple[int, str] | None:
        """Size and recorded SHA-256 of an object, None if there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(location))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise OutputError(f"cannot read {location}: {exc}") from None
        return int(head.get("ContentLength", -1)), str(head.get("Metadata", {}).get(f"{_META}sha256", ""))

    def remove(self, location: Path | str) -> None:
        """See :meth:`OutputStore.remove`."""
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(location))
        except ClientError as exc:
            raise PublishError("removing", location, exc) from exc

    def verify(self, location: Path | str, size: int, sha256: str) -> bool:
        """See :meth:`OutputStore.verify`: the object's size and the SHA-256 recorded when it was uploaded."""
        return self._head(location) == (size, sha256)

    def published(self, location: Path | str, size: int, sha256: str) -> tuple[int, str]:
        """See :meth:`OutputStore.published`: the object's own size and recorded SHA-256 (it may be adopted)."""
        found = self._head(location)
        if found is None:
            raise OutputError("published, but the object is not there", location)
        return found


def open_store(output_root: str | Path, storage_options: Mapping[str, Any] | None, staging: Path) -> OutputStore:
    """The store of an ``output_root``: a local folder, or ``s3://bucket/prefix``."""
    root = object_root(output_root)
    if root is not None:
        return S3Store(root, storage_options or {}, staging)
    if storage_options:
        raise ConfigError("storage_options are for an s3:// output_root")
    return LocalStore(Path(output_root))
