"""Outputs on a real S3-compatible server (moto_server on 127.0.0.1), Parquet and IPC read-backs,
manifests, collisions, and kill -9 at every step of a publication.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from herocollector import CollectionService, Collector, ServiceConfig
from herocollector.actor.demo import MEASURES, write_simulated_run
from herocollector.errors import ConfigError
from herocollector.journal.sqlite import JobState
from herocollector.output.manifest import Manifest
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import MemoryWriter
from herocollector.testing.servers import S3TestServer

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.{{ extension }}"


def config(tmp: Path, root: str, s3: S3TestServer | None, **overrides: Any) -> ServiceConfig:
    arguments: dict[str, Any] = dict(
        save_template=TEMPLATE,
        output_root=root,
        default_metadata={"extension": "arrow"},
        allowed_roots=[str(tmp / "runs")],
        state_dir=str(tmp / "state"),
        scan_interval=None,
        retry_delay=0.05,
        max_retries=1,
    )
    if s3 is not None:
        arguments["storage_options"] = s3.options
    arguments.update(overrides)
    return ServiceConfig.from_arguments(**arguments)


def collect(service: CollectionService, run: Path, state: JobState = JobState.DONE) -> Any:
    service.submit("logger", str(run))

    def finished() -> Any:
        job = service.journal.by_path(str(run))
        return job if job is not None and job.state in (JobState.DONE, JobState.FAILED) else None

    job = wait_for(finished, f"{run.name} to finish")
    assert job.state == state, job.error
    return job


def expected(run: Path, measure: str) -> pa.Table:
    writer = MemoryWriter()
    Collector([run]).collect(writer, rule={"match": {"key": "measure", "op": "eq", "value": measure}})
    return writer.table()


def s3fs(s3: S3TestServer) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{s3.port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )


def test_outputs_and_manifest_on_s3_read_back_with_pyarrow(tmp_path: Path, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    run = Path(write_simulated_run(tmp_path / "runs" / "run-1", records=900, entities=2, seed=1)["path"])
    with CollectionService(config(tmp_path, f"s3://{bucket}/collected", s3)) as service:
        job = collect(service, run)
    assert sorted(job.outputs) == sorted(f"s3://{bucket}/collected/run-1/{m}.arrow" for m in MEASURES)
    fs = s3fs(s3)
    for measure in MEASURES:
        with fs.open_input_file(f"{bucket}/collected/run-1/{measure}.arrow") as fh:
            table = pa.ipc.open_file(fh).read_all()
        assert table.schema.metadata[b"herocollector.logger_path"].decode() == str(run)
        assert table.replace_schema_metadata(None).equals(expected(run, measure))
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"])
    [manifest_key] = [k for k in keys if "/_manifest-run-1-" in k]
    assert manifest_key.startswith("collected.manifests/run-1/")  # the same bucket, beside the outputs' prefix
    manifest = Manifest.from_json(s3.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert manifest.run == str(run) and manifest.job == job.id and manifest.token == 1
    assert {e.path: e.rows for e in manifest.outputs} == job.outputs
    head = s3.client().head_object(Bucket=bucket, Key="collected/run-1/stock.arrow")
    assert head["Metadata"]["herocollector-job"] == str(job.id)
    assert not list((tmp_path / "state" / "staging").rglob("*.tmp"))  # staged files are gone

    dataset = ds.dataset(f"{bucket}/collected", filesystem=fs, format="ipc", exclude_invalid_files=False)
    assert dataset.to_table().num_rows == 900


def test_parquet_outputs_on_s3_read_as_one_dataset(tmp_path: Path, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    runs = [
        Path(write_simulated_run(tmp_path / "runs" / f"run-{i}", records=300, entities=1, seed=i)["path"])
        for i in range(3)
    ]
    cfg = config(
        tmp_path,
        f"s3://{bucket}/pq",
        s3,
        format="parquet",
        default_metadata={"extension": "parquet"},
        columns={"experiment": "string", "measure": "string"},
    )
    with CollectionService(cfg) as service:
        for run in runs:
            collect(service, run)
    table = ds.dataset(f"{bucket}/pq", filesystem=s3fs(s3), format="parquet").to_table()
    assert table.num_rows == 900
    assert table.schema.field("experiment").type == pa.string()
    one = pq.read_table(f"{bucket}/pq/run-0/stock.parquet", filesystem=s3fs(s3))
    assert json.loads(one.schema.metadata[b"herocollector.streams"])  # the provenance is in the key-value metadata
    got = one.drop_columns(["experiment", "measure"]).replace_schema_metadata(None)
    assert got.equals(expected(runs[0], "stock"))


@pytest.mark.parametrize("format", ["file", "stream", "parquet"])
def test_every_format_reads_back_as_the_collector_batches(tmp_path: Path, format: str) -> None:
    run = Path(write_simulated_run(tmp_path / "runs" / "run-1", records=600, entities=2, seed=4)["path"])
    cfg = config(tmp_path, str(tmp_path / "out"), None, format=format, compression="zstd" if format != "file" else None)
    with CollectionService(cfg) as service:
        job = collect(service, run)
    for measure in MEASURES:
        path = tmp_path / "out" / "run-1" / f"{measure}.arrow"
        if format == "file":
            table = pa.ipc.open_file(str(path)).read_all()
        elif format == "stream":
            with pa.OSFile(str(path)) as fh:
                table = pa.ipc.open_stream(fh).read_all()
        else:
            table = pq.read_table(str(path))
        assert table.replace_schema_metadata(None).equals(expected(run, measure))
        assert job.outputs[str(path)] == table.num_rows


def test_an_object_of_another_run_is_never_overwritten(tmp_path: Path, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    s3.client().put_object(Bucket=bucket, Key="c/run-1/stock.arrow", Body=b"somebody else's object")
    run = Path(write_simulated_run(tmp_path / "runs" / "run-1", records=300, entities=1, seed=1)["path"])
    with CollectionService(config(tmp_path, f"s3://{bucket}/c", s3, max_retries=0)) as service:
        job = collect(service, run, JobState.FAILED)
    assert "collision" in job.error and "not written by herocollector" in job.error
    body = s3.client().get_object(Bucket=bucket, Key="c/run-1/stock.arrow")["Body"].read()
    assert body == b"somebody else's object"
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not any("_manifest-" in k for k in keys)  # an incomplete run has no manifest


def test_paths_stay_under_the_prefix(tmp_path: Path, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    run = Path(write_simulated_run(tmp_path / "runs" / "run-1", records=30, entities=1, seed=1)["path"])
    escape = "{{ output_root }}/../elsewhere/{{ measure }}.arrow"
    with CollectionService(config(tmp_path, f"s3://{bucket}/c", s3, save_template=escape, max_retries=0)) as service:
        job = collect(service, run, JobState.FAILED)
    assert "outside output_root" in job.error
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_storage_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="s3:// output_root"):
        config(tmp_path, str(tmp_path / "out"), None, storage_options={"region": "x"})


# ----------------------------------------------------------------------------------------
# kill -9 between upload, manifest and journal update
# ----------------------------------------------------------------------------------------

CRASHING_COLLECTOR = textwrap.dedent(
    """
    import json, os, signal, sys
    from herocollector import CollectionService, ServiceConfig
    from herocollector.journal.sqlite import JobState
    from herocollector.service import runner as runner_module

    arguments, point = json.loads(sys.argv[1]), sys.argv[2]
    service = CollectionService(ServiceConfig.from_arguments(**arguments))
    store, journal = service.runner.store, service.journal

    def dying(original, after=0):
        calls = []
        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) > after:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapped

    if point == "mid-upload":
        store.publish = dying(store.publish, after=1)   # one object published, then death
    elif point == "before-manifest":
        manifests = service.runner.committer.manifests.store  # the manifest root's store
        manifests.put_bytes = dying(manifests.put_bytes)
    elif point == "before-journal":
        journal.finish = dying(journal.finish)
    service.submit("logger", arguments["allowed_roots"][0] + "/run-1")
    service.wait_idle(60)
    """
)


@pytest.mark.parametrize("point", ["mid-upload", "before-manifest", "before-journal"])
def test_kill_9_during_publication_leaves_the_run_complete_exactly_once(
    tmp_path: Path, s3: S3TestServer, point: str
) -> None:
    bucket = s3.bucket()
    run = Path(write_simulated_run(tmp_path / "runs" / "run-1", records=900, entities=2, seed=2)["path"])
    cfg = config(tmp_path, f"s3://{bucket}/c", s3)
    arguments = {
        "save_template": TEMPLATE,
        "output_root": f"s3://{bucket}/c",
        "default_metadata": {"extension": "arrow"},
        "allowed_roots": [str(tmp_path / "runs")],
        "state_dir": str(tmp_path / "state"),
        "scan_interval": None,
        "storage_options": s3.options,
    }
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_COLLECTOR, json.dumps(arguments), point],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-3000:]
    keys_before = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert not any("_manifest-" in k for k in keys_before) or point == "before-journal"

    with CollectionService(cfg) as service:  # the restart
        wait_for(lambda: service.wait_idle(0.1) or None, "the resumed job")
        job = service.journal.by_path(str(run))
    assert job.state == JobState.DONE and job.attempts == 2, job.error
    objects = s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    keys = sorted(o["Key"] for o in objects)
    data_keys = [k for k in keys if not k.rsplit("/", 1)[-1].startswith("_manifest-")]
    assert data_keys == sorted(f"c/run-1/{m}.arrow" for m in MEASURES)  # no orphan under a final name
    [manifest_key] = [k for k in keys if k not in data_keys]
    manifest = Manifest.from_json(s3.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert sorted(e.path for e in manifest.outputs) == sorted(f"s3://{bucket}/{k}" for k in data_keys)
    fs = s3fs(s3)
    for measure in MEASURES:
        with fs.open_input_file(f"{bucket}/c/run-1/{measure}.arrow") as fh:
            assert pa.ipc.open_file(fh).read_all().replace_schema_metadata(None).equals(expected(run, measure))


# ----------------------------------------------------------------------------------------
# The manifest on S3: adopted when true, replaced (never kept) when stale
# ----------------------------------------------------------------------------------------


def objects(s3: S3TestServer, bucket: str) -> dict[str, tuple[str, Any]]:
    listing = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing}


def test_a_run_whose_s3_manifest_is_true_is_adopted_after_a_lost_journal_update(
    tmp_path: Path, s3: S3TestServer
) -> None:
    bucket = s3.bucket()
    run = Path(write_simulated_run(tmp_path / "runs" / "run-1", records=300, entities=2, seed=1)["path"])
    cfg = config(tmp_path, f"s3://{bucket}/c", s3)
    service = CollectionService(cfg)
    calls: list[int] = []

    def lost(job_id: int, outputs: dict[str, int], token: int | None = None) -> Any:
        calls.append(job_id)
        raise OSError(5, "Input/output error (the process died before the journal update)")

    try:
        service.journal.finish = lost  # type: ignore[method-assign]
        service.submit("logger", str(run))
        wait_for(lambda: calls, "the collection to reach the journal update")
    finally:
        service.close()
    before = objects(s3, bucket)
    assert sum("_manifest-" in k for k in before) == 1 and len(before) == len(MEASURES) + 1

    with CollectionService(cfg) as restarted:
        job = wait_for(
            lambda: (j := restarted.journal.by_path(str(run))) is not None and j.state == JobState.DONE and j,
            "the resumed job",
        )
    assert job.attempts == 2
    assert objects(s3, bucket) == before  # nothing uploaded again, the manifest kept as it was
    [manifest_key] = [k for k in before if "_manifest-" in k]
    manifest = Manifest.from_json(s3.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert job.outputs == {e.path: e.rows for e in manifest.outputs}
    for entry in manifest.outputs:
        body = s3.client().get_object(Bucket=bucket, Key=entry.path.split("/", 3)[3])["Body"].read()
        assert len(body) == entry.bytes and hashlib.sha256(body).hexdigest() == entry.sha256


def test_a_stale_s3_manifest_is_removed_and_written_again_to_match_the_objects(
    tmp_path: Path, s3: S3TestServer
) -> None:
    bucket = s3.bucket()
    run = Path(write_simulated_run(tmp_path / "runs" / "run-1", records=300, entities=2, seed=1)["path"])
    with CollectionService(config(tmp_path, f"s3://{bucket}/c", s3)) as service:
        job = collect(service, run)
    [manifest_key] = [k for k in objects(s3, bucket) if "_manifest-" in k]
    true_bytes = s3.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    lie = json.loads(true_bytes)
    lie["outputs"][0]["sha256"] = "0" * 64  # a manifest that does not match its objects
    s3.client().put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(lie).encode())
    # A new journal (another state_dir) collects the run again: its job must not keep that manifest.
    with CollectionService(config(tmp_path, f"s3://{bucket}/c", s3, state_dir=str(tmp_path / "state-2"))) as again:
        second = collect(again, run)
    manifest = Manifest.from_json(s3.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert manifest.job == second.id and manifest.outputs != Manifest.from_json(json.dumps(lie)).outputs
    for entry in manifest.outputs:
        body = s3.client().get_object(Bucket=bucket, Key=entry.path.split("/", 3)[3])["Body"].read()
        assert len(body) == entry.bytes and hashlib.sha256(body).hexdigest() == entry.sha256
    assert job.outputs == second.outputs


def test_a_full_staging_disk_names_the_object_and_the_staging_folder(tmp_path: Path, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    staging = tmp_path / "state" / "staging"
    staging.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(staging)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        run = Path(write_simulated_run(tmp_path / "runs" / "big", records=200_000, entities=1, seed=1)["path"])
        with CollectionService(config(tmp_path, f"s3://{bucket}/c", s3, max_retries=0)) as service:
            job = collect(service, run, JobState.FAILED)
        assert job.error.startswith(f"PublishError: s3://{bucket}/c/big/"), job.error  # the object it was for
        assert "No space left on device" in job.error and f"in the folder {staging / bucket / 'c' / 'big'}" in job.error
        assert [p for p in staging.rglob("*") if p.is_file()] == []  # no staged file keeps the disk full
        assert not s3.client().list_objects_v2(Bucket=bucket).get("Contents")  # nothing was published
    finally:
        subprocess.run(["umount", "-l", str(staging)], check=False)
