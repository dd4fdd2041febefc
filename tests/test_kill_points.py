"""kill -9 of a collection service right after a manifest appears, a journal update, or a first publish, again and again.

A subprocess runs a real :class:`~herocollector.CollectionService` over real runs. At each kill
point it stops right after the step (a manifest is on disk, the journal says done, or one output
is published and the run has no manifest yet), the test sees that from outside (polling the
output folder or the journal) and SIGKILLs it, then starts it again. At the end every run is collected exactly once, every manifest matches its
files (sizes and SHA-256 recomputed), a manifest seen at a kill was adopted as it was (not
rewritten), and no temporary or unaccounted file is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa

from herocollector import Collector
from herocollector.actor.demo import MEASURES, write_simulated_run
from herocollector.journal.sqlite import JobState
from herocollector.output.files import TEMP_SUFFIX
from herocollector.output.manifest import MANIFEST_PREFIX, Manifest
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import MemoryWriter, journal_rows

TEMPLATE = "{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow"

SERVICE = textwrap.dedent(
    """
    import json, logging, sys, threading
    from herocollector import CollectionService, ServiceConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    arguments, point, runs = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    service = CollectionService(ServiceConfig.from_arguments(**arguments))
    frozen = threading.Event()

    def then_freeze(original):
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if point != "manifest" or result:  # a manifest was created
                frozen.wait()  # the test kills this process now
            return result
        return wrapped

    if point == "manifest":
        store = service.runner.committer.manifests.store  # the manifest root's
        store.put_bytes = then_freeze(store.put_bytes)
    elif point == "journal":
        service.journal.finish = then_freeze(service.journal.finish)
    elif point == "publish":
        service.runner.store.publish = then_freeze(service.runner.store.publish)  # one output out, no manifest
    for run in runs:
        service.submit("logger", run)  # a repeated announcement of a collected run is left alone
    idle = service.wait_idle(240)
    service.close()
    sys.exit(0 if idle else 3)
    """
)


def manifest_root(out: Path) -> Path:
    """The default manifest root of ``out``, beside it."""
    return out.with_name(out.name + ".manifests")


def manifests(out: Path) -> dict[Path, bytes]:
    """The manifests of the runs collected to ``out`` (under its manifest root)."""
    root = manifest_root(out)
    return {p: p.read_bytes() for p in root.rglob(f"{MANIFEST_PREFIX}*")} if root.exists() else {}


def names(root: Path) -> set[str]:
    """Every file name under ``root`` and its manifest root, temporary ones included."""
    return {str(p) for folder in (root, manifest_root(root)) if folder.exists() for p in folder.rglob("*")}


def published(root: Path) -> int:
    """Outputs under a final name."""
    return sum(1 for p in root.rglob("*.arrow") if not p.name.startswith(".")) if root.exists() else 0


def done_jobs(state: Path) -> int:
    if not (state / "journal.sqlite3").exists():
        return 0
    return sum(1 for row in journal_rows(state) if row["state"] == JobState.DONE)


def journal_outputs(state: Path) -> dict[str, tuple[int, int]]:
    db = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        return {path: (job, rows) for path, job, rows in db.execute("SELECT path, job_id, rows FROM outputs")}
    finally:
        db.close()


def expected(run: Path, measure: str) -> pa.Table:
    writer = MemoryWriter()
    Collector([run]).collect(writer, rule={"match": {"key": "measure", "op": "eq", "value": measure}})
    return writer.table()


def one_life(
    log_path: Path, point: str, arguments: dict[str, Any], runs: list[Path], changes: int = 1
) -> dict[Path, bytes] | None:
    """Run the service in a subprocess until its kill point, then SIGKILL it (or let it finish: ``none``).

    ``any`` kills it once ``changes`` changes were seen in the output folder or the journal.

    Returns:
        The manifests on disk at the kill (after a ``manifest`` kill point), else nothing; None
        when it was not killed (``any``: it finished first).
    """
    out, state = Path(arguments["output_root"]), Path(arguments["state_dir"])
    before_manifests = set(manifests(out)) if out.exists() else set()
    before_done = done_jobs(state)
    before_outputs = published(out)
    seen = [(names(out), done_jobs(state))]
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", SERVICE, json.dumps(arguments), point, json.dumps([str(r) for r in runs])],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            if point == "none":
                assert child.wait(timeout=240) == 0, log_path.read_text()[-3000:]
                return {}

            def reached() -> bool:
                if point == "any":
                    now = (names(out), done_jobs(state))
                    if now != seen[-1]:
                        seen.append(now)
                    return child.poll() is not None or len(seen) > changes
                assert child.poll() is None, log_path.read_text()[-3000:]  # it must not end on its own
                if point == "manifest":
                    return bool(set(manifests(out)) - before_manifests)
                if point == "publish":
                    return published(out) > before_outputs
                return done_jobs(state) > before_done

            wait_for(reached, f"kill point {point} ({log_path.name})", timeout=120)
            if child.poll() is not None:  # "any": it finished before anything could be seen
                assert child.returncode == 0, log_path.read_text()[-3000:]
                return None
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
            return manifests(out) if point == "manifest" else {}
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def audit(out: Path, state: Path, runs: list[Path], seen_at_kills: dict[Path, bytes]) -> None:
    """Every run collected once, every manifest true, adopted manifests unchanged, nothing unaccounted."""
    rows = journal_rows(state)
    assert sorted(r["path"] for r in rows) == sorted(str(r) for r in runs)  # one job per run
    assert all(r["state"] == JobState.DONE for r in rows), [dict(r) for r in rows]
    reserved = journal_outputs(state)
    listed: set[Path] = set()
    for row in rows:
        [manifest_path] = [p for p in manifests(out) if p.parent == manifest_root(out) / Path(row["path"]).name]
        manifest = Manifest.from_json(manifest_path.read_bytes())
        assert manifest.run == row["path"] and manifest.job == row["id"]
        for entry in manifest.outputs:
            output = Path(entry.path)
            assert output.stat().st_size == entry.bytes
            assert hashlib.sha256(output.read_bytes()).hexdigest() == entry.sha256
            assert reserved[entry.path] == (row["id"], entry.rows)  # the journal's rows are the manifest's
            measure = output.stem
            table = pa.ipc.open_file(str(output)).read_all().replace_schema_metadata(None)
            assert table.equals(expected(Path(row["path"]), measure))  # every row exactly once
            listed.add(output)
        assert sorted(Path(e.path).name for e in manifest.outputs) == sorted(f"{m}.arrow" for m in MEASURES)
    for path, data in seen_at_kills.items():
        assert path.read_bytes() == data  # a manifest that was on disk at a kill was adopted, never rewritten
    leftovers = [
        p for p in out.rglob("*") if p.is_file() and p not in listed and not p.name.startswith(MANIFEST_PREFIX)
    ]
    assert leftovers == []  # no temporary file, no output that no manifest lists
    assert not list(out.rglob(f"*{TEMP_SUFFIX}")) and not list(manifest_root(out).rglob(f"*{TEMP_SUFFIX}"))
    assert not list(out.rglob(f"{MANIFEST_PREFIX}*"))  # none among the data


def test_kill_9_after_manifests_and_journal_updates_leaves_every_run_collected_once_and_true(
    tmp_path: Path,
) -> None:
    runs = [
        Path(write_simulated_run(tmp_path / "runs" / f"run-{i}", records=300, entities=2, seed=i)["path"])
        for i in range(13)
    ]
    out, state = tmp_path / "out", tmp_path / "state"
    arguments: dict[str, Any] = {
        "save_template": TEMPLATE,
        "output_root": str(out),
        "allowed_roots": [str(tmp_path / "runs")],
        "state_dir": str(state),
        "scan_interval": None,
        "workers": 1,
        "retry_delay": 0.05,
        "max_retries": 8,
    }
    seen_at_kills: dict[Path, bytes] = {}
    kills = 0
    points = ["manifest", "journal"] * 5 + ["publish", "none"]  # 5 + 5 at the commit steps, 1 after a publish
    for life, point in enumerate(points):
        seen = one_life(tmp_path / f"life-{life}.log", point, arguments, runs)
        if point != "none":
            assert seen is not None
            kills += 1
            seen_at_kills.update(seen)
    assert kills == len(points) - 1

    audit(out, state, runs, seen_at_kills)
    verify = subprocess.run(
        [sys.executable, "-m", "herocollector", "verify", str(out)], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_kill_9_at_whatever_moment_something_changes_leaves_every_run_collected_once_and_true(
    tmp_path: Path,
) -> None:
    runs = [
        Path(write_simulated_run(tmp_path / "runs" / f"run-{i}", records=600, entities=2, seed=i)["path"])
        for i in range(40)
    ]
    out, state = tmp_path / "out", tmp_path / "state"
    arguments: dict[str, Any] = {
        "save_template": TEMPLATE,
        "output_root": str(out),
        "allowed_roots": [str(tmp_path / "runs")],
        "state_dir": str(state),
        "scan_interval": None,
        "workers": 1,
        "retry_delay": 0.01,
        "max_retries": 40,
    }
    kills = 0
    for life in range(40):  # killed after 1 to 7 changes: a file appears or goes (temporary ones too), a job is done
        if done_jobs(state) == len(runs):
            break
        changes = 1 + (life * 5) % 7
        kills += one_life(tmp_path / f"life-{life}.log", "any", arguments, runs, changes=changes) is not None
    assert kills >= 20
    one_life(tmp_path / "last.log", "none", arguments, runs)
    audit(out, state, runs, {})
    verify = subprocess.run(
        [sys.executable, "-m", "herocollector", "verify", str(out)], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
