"""Verification before delete: a run's outputs against its manifest and the journal (locally and on
a real S3 server), the cleanup that refuses a run failing it, and ``herocollector verify``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.config import ServiceConfig
from herocollector.journal.sqlite import Job, JobState
from herocollector.output.manifest import MANIFEST_PREFIX, ManifestRoot, legacy_manifest_location, manifest_location
from herocollector.output.stores import LocalStore
from herocollector.output.verify import verify_job
from herocollector.run.logdir import segment_files
from herocollector.service.core import CollectionService
from herocollector.testing.actors import wait_for
from herocollector.testing.servers import S3TestServer

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"


class Site:
    """Folders of one test and the services it started (closed at its end)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.out = tmp / "out"
        self.manifests = tmp / "out.manifests"  # the default manifest root, beside output_root
        self.services: list[CollectionService] = []

    def manifest(self, run: Path, outputs: Any) -> Path:
        """Where the manifest of ``run`` is: below the manifest root."""
        return Path(manifest_location(str(run), [str(o) for o in outputs], self.out, self.manifests))

    def service(self, **overrides: Any) -> CollectionService:
        arguments: dict[str, Any] = dict(
            save_template=TEMPLATE,
            output_root=str(self.out),
            allowed_roots=[str(self.runs)],
            state_dir=str(self.tmp / "state"),
            retry_delay=0.05,
            max_retries=0,
            backoff=20,
            scan_interval=None,
            cleanup_grace=3600,
        )
        arguments.update(overrides)
        service = CollectionService(ServiceConfig.from_arguments(**arguments))
        self.services.append(service)
        return service

    def collected(self, service: CollectionService, name: str) -> tuple[Path, Job]:
        run = self.runs / name
        write_simulated_run(run, records=200, entities=2, seed=len(name))
        service.collect(str(run))

        def done() -> Job | None:
            job = service.journal.by_path(str(run))
            return job if job is not None and job.state in (JobState.DONE, JobState.FAILED) else None

        job = wait_for(done, f"{run} to be collected")
        assert job.state == JobState.DONE, job.error
        wait_for(lambda: service.cleaner.ledger.inventory(str(run)), f"the inventory of {run}")
        return run, job

    def close(self) -> None:
        for service in self.services:
            service.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


def current(service: CollectionService, job: int | Path) -> Job:
    """A job as the journal has it now (by id or by run)."""
    found = service.journal.get(job) if isinstance(job, int) else service.journal.by_path(str(job))
    assert found is not None
    return found


def flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herocollector", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )


# ----------------------------------------------------------------------------------------
# The service: verify, and cleanup that refuses what does not verify
# ----------------------------------------------------------------------------------------


def test_a_flipped_byte_fails_verification_and_the_cleanup(site: Site) -> None:
    service = site.service()
    run, job = site.collected(service, "run-1")
    check = service.verify(str(run))
    assert check.ok, check.failures()
    assert {o.path for o in check.outputs} == set(job.outputs) and len(job.outputs) > 1
    assert sum(o.rows for o in check.outputs) == job.rows

    victim = Path(sorted(job.outputs)[1])
    flip_byte(victim)
    check = service.verify(str(run))
    assert not check.ok
    failures = check.failures()
    assert len(failures) == 1 and failures[0].startswith(f"{victim}: SHA-256 ")
    bad = next(o for o in check.outputs if not o.ok)
    assert bad.path == str(victim) and bad.found_bytes == bad.bytes and bad.found_sha256 != bad.sha256
    assert check.to_dict()["ok"] is False and check.to_dict()["outputs"][1]["problems"] == list(bad.problems)

    segments = {p.name: p.read_bytes() for p in segment_files(run)}
    assert service.cleanup(str(run)) is False
    assert {p.name: p.read_bytes() for p in segment_files(run)} == segments
    assert current(service, job.id).state == JobState.DONE
    assert service.cleanup() is False  # every collected run: refused too

    flip_byte(victim)  # put right again
    assert service.verify(str(run)).ok
    assert service.cleanup(str(run)) is True and not segment_files(run)
    assert service.verify(str(run)).ok  # a cleaned run's outputs still verify


def test_a_missing_output_or_manifest_fails_verification(site: Site) -> None:
    service = site.service()
    run, job = site.collected(service, "run-1")
    victim = Path(sorted(job.outputs)[0])
    data = victim.read_bytes()
    victim.unlink()
    check = service.verify(str(run))
    assert check.failures() == [f"{victim}: output missing"]
    assert service.cleanup(str(run)) is False and segment_files(run)

    victim.write_bytes(data[:-1])
    assert any(
        f"size {len(data) - 1} bytes, manifest lists {len(data)}" in f for f in service.verify(str(run)).failures()
    )
    victim.write_bytes(data)
    manifest = site.manifest(run, job.outputs)
    assert manifest.is_file()
    manifest.rename(manifest.with_name("moved.json"))
    failures = service.verify(str(run)).failures()
    assert len(failures) == 1 and failures[0].startswith(f"{manifest}: manifest missing")
    assert service.cleanup(str(run)) is False and segment_files(run)
    manifest.with_name("moved.json").write_text("{not json")
    manifest.with_name("moved.json").rename(manifest)
    assert "unreadable manifest" in service.verify(str(run)).failures()[0]


def test_rows_must_add_up_to_the_journal(site: Site) -> None:
    service = site.service()
    run, job = site.collected(service, "run-1")
    store = LocalStore(site.out)
    manifests = ManifestRoot(LocalStore(site.manifests), site.out, site.manifests)
    assert verify_job(store, str(run), job.outputs, job.rows, manifests).ok
    first = sorted(job.outputs)[0]
    more = {**job.outputs, first: job.outputs[first] + 1}
    check = verify_job(store, str(run), more, (job.rows or 0) + 1, manifests)
    assert (
        f"{first}: manifest lists {job.outputs[first]} rows, the journal {job.outputs[first] + 1}" in check.failures()
    )
    assert any("hold" in p and "journal records" in p for p in check.problems)
    fewer = dict(list(job.outputs.items())[1:])
    check = verify_job(store, str(run), fewer, sum(fewer.values()), manifests)
    assert any(f"the manifest's output {first} is not in the journal" in p for p in check.problems)


def test_verify_of_a_run_that_was_not_collected(site: Site) -> None:
    service = site.service()
    check = service.verify(str(site.runs / "never"))
    assert not check.ok and "not collected" in check.problems[0]


# ----------------------------------------------------------------------------------------
# On S3
# ----------------------------------------------------------------------------------------


def test_verification_on_s3_reads_the_objects(site: Site, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    service = site.service(output_root=f"s3://{bucket}/collected", storage_options=s3.options)
    run, job = site.collected(service, "run-1")
    assert all(p.startswith(f"s3://{bucket}/") for p in job.outputs)
    assert service.verify(str(run)).ok

    victim = sorted(job.outputs)[0]
    key = victim[len(f"s3://{bucket}/") :]
    client = s3.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-20] ^= 0x01
    head = client.head_object(Bucket=bucket, Key=key)
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=head["Metadata"])  # same metadata
    failures = service.verify(str(run)).failures()
    assert len(failures) == 1 and failures[0].startswith(f"{victim}: SHA-256 ")
    assert service.cleanup(str(run)) is False and segment_files(run)

    result = cli("verify", f"s3://{bucket}/collected", *[f"--storage-option={k}={v}" for k, v in s3.options.items()])
    assert result.returncode == 1, result.stderr
    assert f"{victim}: SHA-256" in result.stdout


# ----------------------------------------------------------------------------------------
# herocollector verify
# ----------------------------------------------------------------------------------------


def test_the_verify_command(site: Site) -> None:
    service = site.service()
    run, job = site.collected(service, "run-1")
    other, _ = site.collected(service, "run-22")
    journal = site.tmp / "state" / "journal.sqlite3"

    result = cli("verify", site.out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 2 and "verified 2 run(s): ok" in result.stdout
    assert cli("verify", run, "--journal", journal).returncode == 0

    victim = Path(sorted(job.outputs)[0])
    flip_byte(victim)
    result = cli("verify", site.out)
    assert result.returncode == 1
    assert f"{victim}: SHA-256" in result.stdout and "1 with differences" in result.stdout
    result = cli("verify", run, other, "--journal", journal)
    assert result.returncode == 1 and f"{victim}: SHA-256" in result.stdout and result.stdout.count("ok ") == 1
    manifest = site.manifest(other, current(service, other).outputs)
    assert cli("verify", manifest).returncode == 0  # one manifest on its own

    assert cli("verify", run).returncode == 1  # a run needs the journal
    assert "--journal" in cli("verify", run).stderr
    empty = site.tmp / "empty"
    empty.mkdir()
    result = cli("verify", empty)
    assert result.returncode == 1 and "no run manifest found" in result.stderr
    assert cli("verify", site.tmp / "missing").returncode == 1


def test_an_output_replaced_by_a_fifo_or_a_symlink_fails_without_blocking(site: Site) -> None:
    service = site.service()
    run, job = site.collected(service, "run-1")
    first, second = (Path(p) for p in sorted(job.outputs)[:2])
    first.rename(site.tmp / "first.arrow")
    os.mkfifo(first)  # opening it for reading would block: it must not be opened so
    second.rename(site.tmp / "second.arrow")
    second.symlink_to(site.tmp / "second.arrow")  # the very bytes, but not the published file
    failures = service.verify(str(run)).failures()
    assert sorted(failures) == sorted([f"{first}: output is not a regular file", f"{second}: output is a symlink"])
    assert service.cleanup(str(run)) is False and segment_files(run)


# ----------------------------------------------------------------------------------------
# Where the manifests are: the manifest root, and beside the outputs for runs of version 0.2
# ----------------------------------------------------------------------------------------


def test_the_manifests_lie_under_the_manifest_root_and_none_in_output_root(site: Site) -> None:
    service = site.service()
    run, job = site.collected(service, "run-1")
    manifest = site.manifest(run, job.outputs)
    assert manifest == site.manifests / run.name / manifest.name and manifest.is_file()
    assert not [p for p in site.out.rglob("*") if p.name.startswith(MANIFEST_PREFIX)]
    assert service.verify(str(run)).manifest == str(manifest)


def test_a_given_manifest_root_is_used_by_the_service_and_found_by_the_command(site: Site) -> None:
    elsewhere = site.tmp / "records" / "manifests"
    service = site.service(manifest_root=str(elsewhere))
    run, job = site.collected(service, "run-1")
    [manifest] = elsewhere.rglob(f"{MANIFEST_PREFIX}*.json")
    assert manifest.parent == elsewhere / run.name
    assert not site.manifests.exists()
    assert service.verify(str(run)).ok
    result = cli("verify", site.out, "--manifest-root", elsewhere)
    assert result.returncode == 0 and "verified 1 run(s): ok" in result.stdout, result.stdout + result.stderr
    journal = site.tmp / "state" / "journal.sqlite3"
    result = cli("verify", run, "--journal", journal, "--manifest-root", elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    result = cli("verify", site.out)  # the default manifest root has none: nothing to verify
    assert result.returncode == 1 and "no run manifest found" in result.stderr


def test_runs_collected_by_0_2_verify_and_clean_from_their_manifests_beside_the_outputs(site: Site) -> None:
    service = site.service()
    run, job = site.collected(service, "run-1")
    newer, newer_job = site.collected(service, "run-22")
    # Version 0.2 wrote the manifest beside the outputs: the same file, at the old place.
    manifest = site.manifest(run, job.outputs)
    old = Path(legacy_manifest_location(str(run), list(job.outputs)))
    assert old.parent == site.out / run.name
    manifest.rename(old)

    check = service.verify(str(run))
    assert check.ok and check.manifest == str(old), check.failures()
    assert service.verify(str(newer)).manifest == str(site.manifest(newer, newer_job.outputs))
    journal = site.tmp / "state" / "journal.sqlite3"
    result = cli("verify", site.out)
    assert result.returncode == 0 and "verified 2 run(s): ok" in result.stdout, result.stdout + result.stderr
    assert str(old) in result.stdout
    assert cli("verify", run, "--journal", journal).returncode == 0

    victim = Path(sorted(job.outputs)[0])
    flip_byte(victim)  # the old manifest is checked as strictly as a new one
    assert not service.verify(str(run)).ok
    result = cli("verify", site.out)
    assert result.returncode == 1 and f"{victim}: SHA-256" in result.stdout
    assert service.cleanup(str(run)) is False and segment_files(run)
    flip_byte(victim)
    assert service.cleanup(str(run)) is True and not segment_files(run)
    assert old.is_file()  # left where it is

    old.rename(site.tmp / "away.json")  # no manifest at either place
    failures = service.verify(str(run)).failures()
    assert len(failures) == 1 and failures[0].startswith(f"{manifest}: manifest missing")


def test_check_config_checks_that_the_manifest_root_can_be_written(tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (tmp_path / "runs").mkdir()

    def check(**arguments: Any) -> tuple[int, list[str], dict[str, Any]]:
        config = tmp_path / "collector.json"
        base = {
            "save_template": TEMPLATE,
            "output_root": str(tmp_path / "out"),
            "allowed_roots": [str(tmp_path / "runs")],
            "state_dir": str(tmp_path / "state"),
            **arguments,
        }
        document = {"_id": "collector", "classname": "herocollector.CollectorArchiver", "arguments": base}
        config.write_text(json.dumps(document), encoding="utf-8")
        result = cli("check-config", config, "--json")
        assert "Traceback" not in result.stderr, result.stderr
        report = json.loads(result.stdout)
        return result.returncode, [f"{p['argument']}: {p['message']}" for p in report["problems"]], report

    code, found, report = check()
    assert code == 0, found
    assert report["resolved"]["manifest_location"] == str(tmp_path / "out.manifests")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(readonly)], check=True)
    try:
        code, found, _ = check(manifest_root=str(readonly / "manifests"))
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert code == 1 and len(found) == 1 and found[0].startswith("manifest_root: ") and str(readonly) in found[0]
    code, found, _ = check(manifest_root=str(tmp_path / "out" / "manifests"))  # inside output_root: scans break
    assert code == 1 and any("outside output_root" in line for line in found), found
