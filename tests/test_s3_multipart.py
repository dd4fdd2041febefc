"""Multipart uploads on a real S3-compatible server (moto_server): recorded before the first part,
forgotten when finished, and aborted at the next start after a kill -9, but only the service's own.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector.actor.demo import MEASURES, write_simulated_run
from herocollector.collector import Collector
from herocollector.config import ServiceConfig
from herocollector.errors import OutputError
from herocollector.journal.sqlite import JobState
from herocollector.output import stores, uploads
from herocollector.output.stores import Provenance, S3Store
from herocollector.output.uploads import UPLOADS_FILE, UploadRecord, abort_abandoned
from herocollector.service.core import CollectionService
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import MemoryWriter
from herocollector.testing.servers import S3TestServer
from herocollector.testing.store_contract import StoreTests

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"
SLOW = 120.0  # a child process imports pyarrow, numba's cache and boto3 on a loaded machine

# A service that sends every output in parts of 4 KiB, then stops for good before its second part:
# the test kills it there, as an operator's kill -9 would during a large upload.
STALLING_SERVICE = textwrap.dedent(
    """
    import json, sys, threading
    from herocollector import CollectionService, ServiceConfig
    from herocollector.output import stores

    arguments, run = json.loads(sys.argv[1]), sys.argv[2]
    stores.MULTIPART_THRESHOLD = 0
    stores.PART_SIZE = 4096
    never = threading.Event()
    make_client = stores.s3_client

    def stalling_client(options):
        client = make_client(options)
        upload_part = client.upload_part

        def stalled(**kwargs):
            if kwargs["PartNumber"] > 1:
                never.wait()
            return upload_part(**kwargs)

        client.upload_part = stalled
        return client

    stores.s3_client = stalling_client
    service = CollectionService(ServiceConfig.from_arguments(**arguments))
    service.submit("logger", run)
    never.wait()
    """
)


def arguments(tmp: Path, bucket: str, s3: S3TestServer, state: str) -> dict[str, Any]:
    return {
        "save_template": TEMPLATE,
        "output_root": f"s3://{bucket}/c",
        "allowed_roots": [str(tmp / "runs")],
        "state_dir": str(tmp / state),
        "scan_interval": None,
        "retry_delay": 0.05,
        "storage_options": s3.options,
    }


def in_progress(s3: S3TestServer, bucket: str, prefix: str = "c/") -> dict[str, str]:
    """Upload id → key of every multipart upload S3 lists under ``prefix``."""
    listing = s3.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return {u["UploadId"]: u["Key"] for u in listing.get("Uploads", [])}


def with_a_part(s3: S3TestServer, bucket: str, prefix: str) -> dict[str, str]:
    """The uploads under ``prefix`` that hold at least one part (empty until there is one)."""
    client = s3.client()
    found = in_progress(s3, bucket, prefix)
    return {i: k for i, k in found.items() if client.list_parts(Bucket=bucket, Key=k, UploadId=i).get("Parts")}


class Stalled:
    """A service subprocess stopped in the middle of a multipart upload; killed by :meth:`kill`."""

    def __init__(self, tmp: Path, bucket: str, s3: S3TestServer, state: str, run: Path) -> None:
        self.log = tmp / f"{state}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", STALLING_SERVICE, json.dumps(arguments(tmp, bucket, s3, state)), str(run)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the service exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
        return True

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def stalled() -> Iterator[list[Stalled]]:
    started: list[Stalled] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()


def expected(run: Path, measure: str) -> pa.Table:
    writer = MemoryWriter()
    Collector([run]).collect(writer, rule={"match": {"key": "measure", "op": "eq", "value": measure}})
    return writer.table()


def read_back(s3: S3TestServer, bucket: str, key: str) -> pa.Table:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return pa.ipc.open_file(pa.py_buffer(body)).read_all().replace_schema_metadata(None)


def collected(service: CollectionService, run: Path) -> Any:
    def done() -> Any:
        job = service.journal.by_path(str(run))
        return job if job is not None and job.state in (JobState.DONE, JobState.FAILED) else None

    job = wait_for(done, f"{run.name} to be collected", SLOW)
    assert job.state == JobState.DONE, job.error
    return job


def test_kill_9_mid_upload_then_restart_aborts_its_own_upload_only_and_collects_the_run(
    tmp_path: Path, s3: S3TestServer, stalled: list[Stalled], caplog: pytest.LogCaptureFixture
) -> None:
    bucket = s3.bucket()
    runs = [
        Path(write_simulated_run(tmp_path / "runs" / f"run-{i}", records=3000, entities=2, seed=i)["path"])
        for i in (1, 2)
    ]
    # Two actors of a fleet share the bucket and prefix, each with its own state_dir.
    mine = Stalled(tmp_path, bucket, s3, "state-a", runs[0])
    stalled.append(mine)
    other = Stalled(tmp_path, bucket, s3, "state-b", runs[1])
    stalled.append(other)
    wait_for(lambda: mine.alive() and with_a_part(s3, bucket, "c/run-1/"), "a part of run-1 uploaded", SLOW)
    mine.kill()
    assert mine.process.returncode == -signal.SIGKILL
    left = in_progress(s3, bucket, "c/run-1/")
    live = wait_for(lambda: other.alive() and with_a_part(s3, bucket, "c/run-2/"), "a part of run-2 uploaded", SLOW)
    assert set(live) <= set(in_progress(s3, bucket, "c/run-2/"))
    # Someone else's upload of the very key the killed service was sending (not recorded by it).
    key = sorted(left.values())[0]
    foreign = s3.client().create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    caplog.set_level(logging.INFO, logger="herocollector.output.uploads")
    with CollectionService(ServiceConfig.from_arguments(**arguments(tmp_path, bucket, s3, "state-a"))) as service:
        collected(service, runs[0])
        wait_for(lambda: not set(left) & set(in_progress(s3, bucket)), "the killed service's upload aborted", SLOW)
        check = service.verify(str(runs[0]))
        assert check.ok, check.failures()
        record = UploadRecord(service.config.staging_dir / UPLOADS_FILE)
        assert record.all() == []
    remaining = in_progress(s3, bucket)
    others = {i for i, k in remaining.items() if k.startswith("c/run-2/")}
    assert set(live) <= others and remaining[foreign] == key  # the live actor's and the foreign one are kept
    assert set(remaining) == others | {foreign}  # and nothing else: run-1 left nothing of its own
    aborted = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "aborted the" in r.getMessage()]
    assert sorted(m.split(" (upload id ")[0].rsplit(" ", 1)[1] for m in aborted) == sorted(
        f"s3://{bucket}/{k}" for k in left.values()
    ), aborted
    for measure in MEASURES:
        assert read_back(s3, bucket, f"c/run-1/{measure}.arrow").equals(expected(runs[0], measure))

    # The other actor is killed too; its own restart aborts its upload and collects its run.
    other.kill()
    theirs = set(in_progress(s3, bucket, "c/run-2/"))
    assert theirs
    with CollectionService(ServiceConfig.from_arguments(**arguments(tmp_path, bucket, s3, "state-b"))) as service:
        collected(service, runs[1])
        wait_for(lambda: not theirs & set(in_progress(s3, bucket)), "the other service's upload aborted", SLOW)
        assert service.verify(str(runs[1])).ok
    assert in_progress(s3, bucket) == {foreign: key}  # nothing of herocollector's left under the prefix
    s3.client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=foreign)


# ----------------------------------------------------------------------------------------
# The record itself, on one store in this process
# ----------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, s3: S3TestServer, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setattr(stores, "MULTIPART_THRESHOLD", 0)  # every file in parts; one part is its last, of any size
    return S3Store(f"s3://{s3.bucket()}/c", s3.options, tmp_path / "staging")


def test_an_upload_is_recorded_before_its_first_part_and_forgotten_once_complete(store: S3Store) -> None:
    seen: list[list[str]] = []
    upload_part = store.client.upload_part

    def spying(**kwargs: Any) -> Any:
        seen.append([u.upload_id for u in store.uploads.all()])
        return upload_part(**kwargs)

    store.client.upload_part = spying
    where = f"{store.root}/run-a/stock.arrow"
    output = StoreTests.finished(store, where)
    store.publish(output, where, Provenance("/runs/a", 1, 1), replace_own=False)
    assert len(seen) == 1 and len(seen[0]) == 1  # the upload was on record when its part went out
    assert store.uploads.all() == []
    assert store.verify(where, output.bytes, output.sha256)
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_a_failed_completion_aborts_the_upload_and_forgets_it(store: S3Store) -> None:
    where = f"{store.root}/run-a/stock.arrow"
    store.publish(StoreTests.finished(store, where), where, Provenance("/runs/a", 1, 1), replace_own=False)
    with pytest.raises(OutputError, match="output collision"):  # the conditional completion fails
        store.publish(StoreTests.finished(store, where, job=2), where, Provenance("/runs/b", 2, 1), replace_own=False)
    assert store.uploads.all() == []
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_only_uploads_recorded_by_earlier_processes_and_still_listed_are_aborted(
    store: S3Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, bucket = store.client, store.bucket

    def upload(key: str) -> str:
        return str(client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])

    earlier, current, unrecorded = upload("c/a.arrow"), upload("c/b.arrow"), upload("c/a.arrow")
    client.put_object(Bucket=bucket, Key="c/done.arrow", Body=b"complete")
    with monkeypatch.context() as m:
        m.setattr(uploads, "PROCESS", "1-an-earlier-process")
        store.uploads.add(bucket, "c/a.arrow", earlier)
        store.uploads.add(bucket, "c/done.arrow", "an-upload-that-was-completed")
    store.uploads.add(bucket, "c/b.arrow", current)  # this process's upload in progress

    caplog.set_level(logging.INFO, logger="herocollector.output.uploads")
    assert abort_abandoned(client, store.uploads) == [f"s3://{bucket}/c/a.arrow"]
    listed = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]}
    assert listed == {current, unrecorded}
    assert [u.upload_id for u in store.uploads.all()] == [current]
    assert client.get_object(Bucket=bucket, Key="c/done.arrow")["Body"].read() == b"complete"
    assert any(f"s3://{bucket}/c/a.arrow" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert abort_abandoned(client, store.uploads) == []  # a second round finds nothing
    client.abort_multipart_upload(Bucket=bucket, Key="c/b.arrow", UploadId=current)
    client.abort_multipart_upload(Bucket=bucket, Key="c/a.arrow", UploadId=unrecorded)


def test_an_upload_that_cannot_be_aborted_now_stays_recorded_for_the_next_round(
    store: S3Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with monkeypatch.context() as m:
        m.setattr(uploads, "PROCESS", "1-an-earlier-process")
        store.uploads.add("hc-a-bucket-that-is-gone", "c/a.arrow", "some-upload")
    caplog.set_level(logging.WARNING, logger="herocollector.output.uploads")
    store.abort_abandoned()  # never raises
    assert [u.upload_id for u in store.uploads.all()] == ["some-upload"]
    assert any("s3://hc-a-bucket-that-is-gone/c/a.arrow" in r.getMessage() for r in caplog.records)


def test_a_store_that_never_uploaded_in_parts_creates_no_record(tmp_path: Path, s3: S3TestServer) -> None:
    store = S3Store(f"s3://{s3.bucket()}/c", s3.options, tmp_path / "staging")
    store.abort_abandoned()
    assert not (tmp_path / "staging").exists()
