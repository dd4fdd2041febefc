"""The manifest is a run's commit record and always tells the truth; a failed publish leaves nothing.

Real faults only: an attempt whose journal update never lands (the service closed before it
could record it, as a crash would), outputs changed under a manifest, a real full disk (a
small tmpfs, filled right before the manifest is written) and a folder turned read-only (a
tmpfs remounted ``ro``) in the middle of a publish.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector import CollectionService, ServiceConfig
from herocollector.actor.demo import MEASURES, write_simulated_run
from herocollector.errors import OutputError
from herocollector.events import RunFailed
from herocollector.journal.sqlite import Job, JobState
from herocollector.output.files import TEMP_SUFFIX, temporary_name
from herocollector.output.manifest import (
    MANIFEST_PREFIX,
    Manifest,
    ManifestEntry,
    ManifestRoot,
    check_manifest,
    legacy_manifest_location,
    manifest_location,
    new_manifest,
    write_manifest,
)
from herocollector.output.stores import LocalStore, OutputStore, Provenance
from herocollector.service.commit import ManifestCommitter
from herocollector.testing.actors import wait_for

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"


class Site:
    """Runs, an output root and the services of one test (closed at its end)."""

    def __init__(self, tmp: Path, out: Path | None = None, manifests: Path | None = None) -> None:
        self.tmp = tmp
        self.runs = tmp / "runs"
        self.runs.mkdir(exist_ok=True)
        self.out = out or tmp / "out"
        self.manifests = manifests or self.out.with_name(self.out.name + ".manifests")
        self.state = tmp / "state"
        self.services: list[CollectionService] = []
        self.failures: list[RunFailed] = []

    def service(self, **overrides: Any) -> CollectionService:
        arguments: dict[str, Any] = dict(
            save_template=TEMPLATE,
            output_root=str(self.out),
            manifest_root=str(self.manifests),
            allowed_roots=[str(self.runs)],
            state_dir=str(self.state),
            retry_delay=0.05,
            max_retries=0,
            scan_interval=None,
        )
        arguments.update(overrides)
        service = CollectionService(ServiceConfig.from_arguments(**arguments), on_failed=self.failures.append)
        self.services.append(service)
        return service

    def run(self, name: str, records: int = 300, seed: int = 1) -> Path:
        path = self.runs / name
        write_simulated_run(path, records=records, entities=2, seed=seed)
        return path

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


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs as the output root: a real full disk, and a real read-only remount."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def finished(service: CollectionService, run: Path, *states: JobState) -> Job:
    def check() -> Job | None:
        job = service.journal.by_path(str(run))
        return job if job is not None and job.state in states else None

    return wait_for(check, f"{run.name} to become {'/'.join(states)} (now {service.journal.by_path(str(run))})", 60)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def manifest_store(service: CollectionService) -> OutputStore:
    """The store the service writes its manifests to."""
    committer = service.runner.committer
    assert isinstance(committer, ManifestCommitter)
    return committer.manifests.store


def snapshot(site: Site, run: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and inode of each output of ``run`` and of its manifest, by name."""
    files = [*(site.out / run.name).iterdir(), *(site.manifests / run.name).iterdir()]
    return {p.name: (sha256(p), p.stat().st_ino) for p in files}


def true_manifest(folder: Path, run: Path) -> Manifest:
    """The run's one manifest in ``folder`` (below the manifest root), checked against the files: sizes and SHA-256."""
    [path] = [p for p in folder.iterdir() if p.name.startswith(MANIFEST_PREFIX)]
    manifest = Manifest.from_json(path.read_bytes())
    assert manifest.run == str(run)
    for entry in manifest.outputs:
        output = Path(entry.path)
        assert output.stat().st_size == entry.bytes, entry.path
        assert sha256(output) == entry.sha256, entry.path
    assert sorted(Path(e.path).name for e in manifest.outputs) == sorted(f"{m}.arrow" for m in MEASURES)
    return manifest


def accounted_for(service: CollectionService, root: Path, job: Job) -> None:
    """No temporary file, and every file under a final name is the job's, by a manifest or a reservation."""
    for path in files_under(root):
        assert not path.name.endswith(TEMP_SUFFIX), path
        if path.name.startswith(MANIFEST_PREFIX):
            continue
        owner = service.journal.owner_of(str(path))
        assert owner is not None and owner.id == job.id, f"{path} is accounted for by no record"


def lose_the_journal_update(service: CollectionService) -> list[int]:
    """Make every ``finish`` of the journal fail, as if the process died right after the manifest."""
    calls: list[int] = []

    def broken(job_id: int, outputs: dict[str, int], token: int | None = None) -> Job:
        calls.append(job_id)
        raise OSError(5, "Input/output error (the process died before the journal update)")

    service.journal.finish = broken  # type: ignore[method-assign]
    return calls


def interrupted_after_manifest(site: Site, run: Path) -> dict[str, tuple[str, int]]:
    """Collect ``run`` up to its manifest, never recording it in the journal; returns sha/inode per file."""
    service = site.service()
    calls = lose_the_journal_update(service)
    service.submit("logger", run)
    wait_for(lambda: calls, "the collection to reach the journal update", 60)
    service.close()
    true_manifest(site.manifests / run.name, run)
    assert not [p for p in (site.out / run.name).iterdir() if p.name.startswith(MANIFEST_PREFIX)]  # none beside
    return snapshot(site, run)


# ----------------------------------------------------------------------------------------
# The manifest is the commit record
# ----------------------------------------------------------------------------------------


def test_a_retry_adopts_a_run_whose_manifest_is_complete_and_true(site: Site) -> None:
    run = site.run("run-1")
    before = interrupted_after_manifest(site, run)
    folder = site.manifests / run.name
    [manifest_path] = [p for p in folder.iterdir() if p.name.startswith(MANIFEST_PREFIX)]
    gone = subprocess.Popen(["true"])
    gone.wait()
    parts = temporary_name(manifest_path).name.split(".")
    parts[3] = str(gone.pid)  # the temporary name of a writer killed right after linking the manifest
    leftover = folder / ".".join(parts)
    leftover.write_bytes(manifest_path.read_bytes())

    restarted = site.service()  # resumes the job: it was running when its process "died"
    job = finished(restarted, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE and job.attempts == 2, job.error
    manifest = true_manifest(folder, run)
    after = snapshot(site, run)
    assert after == before  # adopted: not one byte rewritten, the manifest included; the leftover removed
    assert job.outputs == {e.path: e.rows for e in manifest.outputs}  # done with the manifest's rows
    assert sum(job.outputs.values()) == 300


def test_outputs_changed_under_a_manifest_are_all_replaced_with_a_new_manifest(site: Site) -> None:
    run = site.run("run-1")
    before = interrupted_after_manifest(site, run)
    folder = site.out / run.name
    tampered = folder / f"{MEASURES[0]}.arrow"
    tampered.write_bytes(tampered.read_bytes() + b"\0")  # the manifest no longer matches this file

    restarted = site.service()
    job = finished(restarted, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    manifest = true_manifest(site.manifests / run.name, run)  # new, and true
    after = snapshot(site, run)
    assert all(after[name] != before[name] for name in before)  # every output and the manifest replaced
    assert manifest.job == job.id and manifest.token == job.token
    accounted_for(restarted, site.out, job)


def test_outputs_without_a_manifest_are_replaced_and_committed(site: Site) -> None:
    run = site.run("run-1")
    service = site.service(max_retries=1)
    original = manifest_store(service).put_bytes
    calls: list[int] = []

    def first_manifest_lost(location: Path | str, data: bytes, stamp: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return original(location, data, stamp)

    manifest_store(service).put_bytes = first_manifest_lost  # type: ignore[method-assign]
    service.submit("logger", run)
    job = finished(service, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE and job.attempts == 2, job.error
    true_manifest(site.manifests / run.name, run)
    accounted_for(service, site.out, job)


# ----------------------------------------------------------------------------------------
# Runs collected by version 0.2, whose manifest lies beside the outputs
# ----------------------------------------------------------------------------------------


def as_collected_by_0_2(site: Site, run: Path) -> Path:
    """Move the run's manifest to where version 0.2 wrote it, beside its outputs (the same file)."""
    [manifest] = [p for p in (site.manifests / run.name).iterdir() if p.name.startswith(MANIFEST_PREFIX)]
    outputs = sorted((site.out / run.name).iterdir())
    old = Path(legacy_manifest_location(str(run), outputs))
    assert old.parent == site.out / run.name
    manifest.rename(old)
    return old


def test_a_retry_adopts_a_run_of_0_2_from_its_manifest_beside_the_outputs(site: Site) -> None:
    run = site.run("run-1")
    interrupted_after_manifest(site, run)
    old = as_collected_by_0_2(site, run)
    before = {p.name: (sha256(p), p.stat().st_ino) for p in (site.out / run.name).iterdir()}

    restarted = site.service()
    job = finished(restarted, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE and job.attempts == 2, job.error
    after = {p.name: (sha256(p), p.stat().st_ino) for p in (site.out / run.name).iterdir()}
    assert after == before  # adopted: nothing rewritten, the old manifest kept where it is
    assert not list((site.manifests / run.name).iterdir())  # and no second manifest
    manifest = true_manifest(old.parent, run)
    assert job.outputs == {e.path: e.rows for e in manifest.outputs}
    check = restarted.verify(str(run))
    assert check.ok and check.manifest == str(old), check.failures()


def test_a_stale_manifest_of_0_2_is_removed_and_the_new_one_goes_under_the_manifest_root(site: Site) -> None:
    run = site.run("run-1")
    interrupted_after_manifest(site, run)
    old = as_collected_by_0_2(site, run)
    tampered = site.out / run.name / f"{MEASURES[0]}.arrow"
    tampered.write_bytes(tampered.read_bytes() + b"\0")  # the old manifest no longer matches this file

    restarted = site.service()
    job = finished(restarted, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    assert not old.exists()  # removed before the outputs were replaced
    manifest = true_manifest(site.manifests / run.name, run)
    assert manifest.job == job.id and manifest.token == job.token
    assert restarted.verify(str(run)).ok
    accounted_for(restarted, site.out, job)


def test_something_else_at_the_old_place_is_left_alone(site: Site) -> None:
    run = site.run("run-1")
    folder = site.out / run.name
    folder.mkdir(parents=True)
    outputs = [folder / f"{m}.arrow" for m in MEASURES]
    old = Path(legacy_manifest_location(str(run), outputs))
    old.write_bytes(b"not a manifest, and not where manifests go any more")
    service = site.service()
    service.submit("logger", run)
    job = finished(service, run, JobState.DONE, JobState.FAILED)
    assert job.state == JobState.DONE, job.error
    assert old.read_bytes().startswith(b"not a manifest")
    true_manifest(site.manifests / run.name, run)


def test_manifest_location_mirrors_the_outputs_folder_below_output_root(tmp_path: Path) -> None:
    outputs = ["/d/out/exp/r1/a.arrow", "/d/out/exp/r1/b.arrow"]
    location = Path(manifest_location("/runs/r1", outputs, "/d/out", "/d/out.manifests"))
    assert location.parent == Path("/d/out.manifests/exp/r1") and location.name.startswith(f"{MANIFEST_PREFIX}r1-")
    assert Path(legacy_manifest_location("/runs/r1", outputs)) == Path("/d/out/exp/r1") / location.name
    nested = ["/d/out/exp/r1/x/a.arrow", "/d/out/exp/r1/y/b.arrow"]
    assert Path(manifest_location("/runs/r1", nested, "/d/out/", "/m")).parent == Path("/m/exp/r1")
    flat = ["/d/out/a.arrow"]
    assert Path(manifest_location("/runs/r1", flat, "/d/out", "/m")).parent == Path("/m")
    s3 = ["s3://lab/collected/exp/r1/a.parquet"]
    assert manifest_location("/runs/r1", s3, "s3://lab/collected", "s3://lab/collected.manifests") == (
        f"s3://lab/collected.manifests/exp/r1/{location.name}"
    )
    with pytest.raises(OutputError, match="not below output_root"):
        manifest_location("/runs/r1", ["/d/outside/a.arrow"], "/d/out", "/m")
    with pytest.raises(OutputError, match="not below output_root"):
        manifest_location("/runs/r1", ["/d/out2/a.arrow"], "/d/out", "/m")


# ----------------------------------------------------------------------------------------
# A full disk at the manifest, a folder turned read-only during the publish
# ----------------------------------------------------------------------------------------


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte (a real ENOSPC for the next write)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def before(method: Callable[..., Any], fault: Callable[[], None], on_call: int = 1) -> Callable[..., Any]:
    """``method``, with ``fault`` done right before its ``on_call``-th call."""
    calls: list[int] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == on_call:
            fault()
        return method(*args, **kwargs)

    return wrapped


def test_a_full_disk_at_the_manifest_fails_the_job_and_leaves_nothing_unaccounted(
    tmp_path: Path, small_root: Path
) -> None:
    site = Site(tmp_path, small_root / "out", small_root / "manifests")  # the manifests on the small disk too
    try:
        run = site.run("run-1")
        service = site.service()
        fillers: list[Path] = []
        store = manifest_store(service)
        store.put_bytes = before(store.put_bytes, lambda: fillers.append(fill(small_root)))  # type: ignore[method-assign]
        service.submit("logger", run)
        wait_for(lambda: site.failures, "the failure to be recorded and reported", 60)
        job = finished(service, run, JobState.FAILED, JobState.DONE)
        assert job.state == JobState.FAILED
        folder = site.out / run.name
        manifests = site.manifests / run.name
        assert f"{manifests}/{MANIFEST_PREFIX}" in job.error  # the final name of the manifest
        assert "No space left on device" in job.error and f"in the folder {manifests}" in job.error
        assert TEMP_SUFFIX not in job.error
        fillers[0].unlink()
        published = [p for p in files_under(small_root) if p.parent in (folder, manifests)]
        assert sorted(p.name for p in published) == sorted(f"{m}.arrow" for m in MEASURES)  # no manifest
        accounted_for(service, small_root, job)  # the journal knows the three published outputs

        assert service.retry(str(run)) == 1  # space freed
        done = finished(service, run, JobState.DONE, JobState.FAILED)
        assert done.state == JobState.DONE, done.error
        true_manifest(manifests, run)
        accounted_for(service, small_root, done)
    finally:
        site.close()


def test_a_folder_turned_read_only_during_the_publish_leaves_nothing_after_the_retry(
    tmp_path: Path, small_root: Path
) -> None:
    site = Site(tmp_path, small_root)
    try:
        run = site.run("run-1")
        service = site.service()
        folder = small_root / run.name

        def remount(mode: str) -> None:
            subprocess.run(["mount", "-o", f"remount,{mode}", str(small_root)], check=True, capture_output=True)

        store = service.runner.store
        store.publish = before(store.publish, lambda: remount("ro"), on_call=2)  # type: ignore[method-assign]
        service.submit("logger", run)
        wait_for(lambda: site.failures, "the failure to be recorded and reported", 60)
        job = finished(service, run, JobState.FAILED, JobState.DONE)
        assert job.state == JobState.FAILED
        published = [p for p in files_under(folder) if not p.name.endswith(TEMP_SUFFIX)]
        assert len(published) == 1  # the first output went out before the folder turned read-only
        assert published[0].name in {f"{m}.arrow" for m in MEASURES}
        assert job.error.startswith(f"PublishError: {folder}/")  # the cause, with the final path
        assert "publishing failed: [Errno 30] Read-only file system" in job.error
        assert f"in the folder {folder}" in job.error and TEMP_SUFFIX not in job.error
        owner = service.journal.owner_of(str(published[0]))
        assert owner is not None and owner.id == job.id  # the journal knows what was published

        remount("rw")
        assert service.retry(str(run)) == 1
        done = finished(service, run, JobState.DONE, JobState.FAILED)
        assert done.state == JobState.DONE, done.error
        true_manifest(site.manifests / run.name, run)
        accounted_for(service, small_root, done)  # the temporary files of the failed publish are gone too
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_root)], check=False, capture_output=True)
        site.close()


def test_a_full_disk_while_writing_names_the_final_path_and_leaves_no_temporary_file(
    tmp_path: Path, small_root: Path
) -> None:
    site = Site(tmp_path, small_root)
    try:
        run = site.run("big", records=200_000)
        service = site.service()
        service.submit("logger", run)
        job = finished(service, run, JobState.FAILED, JobState.DONE)
        assert job.state == JobState.FAILED
        assert "No space left on device" in job.error and f"in the folder {small_root / run.name}" in job.error
        assert any(f"{small_root / run.name / measure}.arrow" in job.error for measure in MEASURES)
        assert TEMP_SUFFIX not in job.error
        assert files_under(small_root) == []
    finally:
        site.close()


# ----------------------------------------------------------------------------------------
# check_manifest on its own
# ----------------------------------------------------------------------------------------


def _roots(tmp_path: Path) -> ManifestRoot:
    return ManifestRoot(LocalStore(tmp_path / "out.manifests"), tmp_path / "out", tmp_path / "out.manifests")


def _committed_run(tmp_path: Path) -> tuple[LocalStore, list[Path], Manifest]:
    store = LocalStore(tmp_path / "out")
    outputs = [tmp_path / "out" / "run-1" / f"{m}.bin" for m in ("a", "b")]
    entries = []
    for i, output in enumerate(outputs):
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(bytes([i]) * (100 + i))
        entries.append(ManifestEntry(str(output), 10 + i, output.stat().st_size, sha256(output)))
    manifest = new_manifest("/runs/run-1", 7, 3, entries)
    assert write_manifest(_roots(tmp_path), manifest, Provenance("/runs/run-1", 7, 3)) is not None
    return store, outputs, manifest


def test_check_manifest_commits_only_the_jobs_true_manifest_of_exactly_the_planned_outputs(tmp_path: Path) -> None:
    store, outputs, manifest = _committed_run(tmp_path)
    roots = _roots(tmp_path)
    check = check_manifest(store, roots, "/runs/run-1", 7, outputs)
    assert check.committed and check.found == manifest
    assert not check_manifest(store, roots, "/runs/run-1", 8, outputs).committed  # another job's
    assert not check_manifest(store, roots, "/runs/run-1", 7, outputs[:1]).committed  # other outputs planned now
    outputs[1].write_bytes(outputs[1].read_bytes()[:-1] + b"\xff")  # same size, other bytes
    check = check_manifest(store, roots, "/runs/run-1", 7, outputs)
    assert not check.committed and check.mismatched == (str(outputs[1]),)


def test_check_manifest_refuses_another_runs_manifest_or_a_foreign_file(tmp_path: Path) -> None:
    store, outputs, manifest = _committed_run(tmp_path)
    roots = _roots(tmp_path)
    location = roots.location("/runs/run-1", outputs)
    other = Manifest("/runs/other", 1, 1, 0.0, manifest.outputs)
    Path(location).write_bytes(other.to_json())
    with pytest.raises(OutputError, match="manifest collision: it belongs to the run /runs/other"):
        check_manifest(store, roots, "/runs/run-1", 7, outputs)
    Path(location).write_bytes(b"not json")
    with pytest.raises(OutputError, match="manifest collision"):
        check_manifest(store, roots, "/runs/run-1", 7, outputs)


def test_write_manifest_keeps_an_identical_manifest_and_refuses_a_different_one(tmp_path: Path) -> None:
    store, outputs, manifest = _committed_run(tmp_path)
    roots = _roots(tmp_path)
    location = roots.location("/runs/run-1", outputs)
    before = Path(location).read_bytes()
    assert write_manifest(roots, manifest, Provenance("/runs/run-1", 7, 3)) == location
    assert Path(location).read_bytes() == before
    changed = Manifest(manifest.run, manifest.job, 4, manifest.collected_at, manifest.outputs[:1])
    with pytest.raises(OutputError, match="manifest collision: it lists other outputs"):
        write_manifest(roots, changed, Provenance("/runs/run-1", 7, 4))
    assert Path(location).read_bytes() == before


# ----------------------------------------------------------------------------------------
# Whatever is in the way under a final name, nothing blocks a worker
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["output", "manifest"])
def test_a_fifo_under_a_final_name_fails_the_job_naming_it_and_never_blocks(site: Site, where: str) -> None:
    run = site.run("run-1")
    folder = site.out / run.name
    folder.mkdir(parents=True)
    outputs = [folder / f"{m}.arrow" for m in MEASURES]
    fifo = outputs[0] if where == "output" else Path(manifest_location(str(run), outputs, site.out, site.manifests))
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    service = site.service()
    service.submit("logger", run)
    job = finished(service, run, JobState.FAILED, JobState.DONE)
    assert job.state == JobState.FAILED
    assert str(fifo) in job.error
    assert ("collision" if where == "output" else "is not a regular file") in job.error
    assert fifo.exists() and stat.S_ISFIFO(fifo.lstat().st_mode)  # left alone
    assert not [p for p in files_under(site.out) if p.name.endswith(TEMP_SUFFIX)]
