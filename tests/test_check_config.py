"""``herocollector check-config``: a BOSS config checked without starting anything, every problem named.

The shipped configs (the collector's passes, the demo logger's is said to be for another class),
then one config per kind of mistake: JSON, arguments (all of them reported at once), the rules
between arguments, the template rendered for a real run, folders (a read-only tmpfs, a file
where a folder should be), a PostgreSQL journal (a real server, and a port nobody listens on)
and an S3 output root (a real moto server, a missing bucket, an unreachable endpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from herocollector.actor.demo import write_simulated_run
from herocollector.testing.servers import PostgresTestServer, S3TestServer, free_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "herocollector" / "boss_configs"


def check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m herocollector check-config ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "herocollector", "check-config", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The error lines on stderr (one per problem)."""
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("herocollector: error: ")]


def write_config(tmp_path: Path, **arguments: Any) -> Path:
    """A collector config with working folders under ``tmp_path``, some arguments replaced (None removes one)."""
    (tmp_path / "runs").mkdir(exist_ok=True)
    base: dict[str, Any] = {
        "save_template": "{{ output_root }}/{{ experiment }}/{{ logger_name }}/{{ measure }}.arrow",
        "default_metadata": {"output_root": str(tmp_path / "out")},
        "allowed_roots": [str(tmp_path / "runs")],
        "state_dir": str(tmp_path / "state"),
    }
    base.update(arguments)
    base = {k: v for k, v in base.items() if v is not None}
    path = tmp_path / "collector.json"
    document = {"_id": "collector", "classname": "herocollector.CollectorArchiver", "arguments": base}
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_the_shipped_collector_config_passes_and_is_printed_resolved() -> None:
    result = check(SHIPPED / "collector.json", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["resolved"]["compression"] == "zstd"
    assert report["resolved"]["journal_location"].endswith("/state/journal.sqlite3")
    human = check(SHIPPED / "collector.json")
    assert human.returncode == 0 and "no problem found" in human.stdout and "save_template" in human.stdout


def test_the_demo_logger_config_is_said_to_be_for_another_class() -> None:
    result = check(SHIPPED / "demo_logger.json")
    assert result.returncode == 1
    [line] = problems(result)
    assert "herocollector.actor.demo.DemoLogger" in line and "not the collector actor" in line
    assert "classname" in line


def test_a_file_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"_id": "collector",', encoding="utf-8")
    result = check(bad)
    assert result.returncode == 1
    [line] = problems(result)
    assert str(bad) in line and "not JSON" in line


def test_every_bad_argument_is_named_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, save_template=None, workers=0, compression="brotli", wokers=3, rule=7)
    result = check(config)
    assert result.returncode == 1
    lines = problems(result)
    for argument in ("save_template", "workers", "compression", "wokers", "rule"):
        assert any(f": {argument}: " in line for line in lines), (argument, lines)
    assert any("required" in line for line in lines if ": save_template: " in line)
    assert any("unknown argument" in line for line in lines if ": wokers: " in line)
    assert "no problem found" not in result.stdout


def test_a_rule_between_arguments_names_the_argument(tmp_path: Path) -> None:
    result = check(write_config(tmp_path, storage_options={"region": "x"}))
    assert result.returncode == 1
    [line] = problems(result)
    assert ": storage_options: " in line and "s3://" in line


def test_the_template_is_rendered_for_the_streams_of_a_run(tmp_path: Path) -> None:
    run = Path(
        write_simulated_run(tmp_path / "runs" / "run-1", records=100, entities=2, labels={"experiment": "x"})["path"]
    )
    good = check(write_config(tmp_path), "--run", run)
    assert good.returncode == 0, good.stderr
    assert f"{tmp_path / 'out'}/x/run-1/" in good.stdout and "file(s)" in good.stdout
    bad = check(
        write_config(tmp_path, save_template="{{ output_root }}/{{ campaign }}/{{ measure }}.arrow"), "--run", run
    )
    assert bad.returncode == 1
    lines = problems(bad)
    assert lines and all(": save_template: stream " in line and "campaign" in line for line in lines), lines


def test_folders_that_cannot_be_used(tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(readonly)], check=True)
    try:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        config = write_config(
            tmp_path,
            default_metadata={"output_root": str(readonly / "out")},
            state_dir=str(blocker / "state"),
            allowed_roots=[str(blocker)],
        )
        result = check(config)
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert result.returncode == 1
    lines = problems(result)
    assert any(": output_root: " in line and str(readonly) in line for line in lines), lines
    assert any(": state_dir: " in line and str(blocker) in line for line in lines), lines
    assert any(": allowed_roots: " in line and "not a folder" in line for line in lines), lines


def test_a_missing_allowed_root_is_a_warning(tmp_path: Path) -> None:
    result = check(write_config(tmp_path, allowed_roots=[str(tmp_path / "later")]))
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "allowed_roots" in result.stderr and "later" in result.stderr


def test_a_journal_it_cannot_connect_to(tmp_path: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    result = check(write_config(tmp_path, journal=url))
    assert result.returncode == 1
    [line] = problems(result)
    assert ": journal: cannot connect to " in line and "127.0.0.1" in line


def test_a_journal_that_answers(tmp_path: Path, postgres: PostgresTestServer) -> None:
    result = check(write_config(tmp_path, journal=postgres.database()))
    assert result.returncode == 0, result.stderr


def test_s3_output_roots(tmp_path: Path, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    good = check(
        write_config(tmp_path, default_metadata={"output_root": f"s3://{bucket}/runs"}, storage_options=s3.options)
    )
    assert good.returncode == 0, good.stderr
    missing = check(
        write_config(tmp_path, default_metadata={"output_root": "s3://no-such-bucket/runs"}, storage_options=s3.options)
    )
    assert missing.returncode == 1
    [line] = problems(missing)
    assert ": output_root: " in line and "no-such-bucket" in line
    away = {**s3.options, "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    unreachable = check(
        write_config(tmp_path, default_metadata={"output_root": f"s3://{bucket}/x"}, storage_options=away)
    )
    assert unreachable.returncode == 1
    [line] = problems(unreachable)
    assert ": storage_options: cannot reach the S3 endpoint" in line
