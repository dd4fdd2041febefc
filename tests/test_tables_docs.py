"""Every snippet of docs/tables.md and the README's Delta snippet, run against a table the actor wrote.

The docs' paths (``/data/tables/...``, ``/data/runs/run-0001``) are replaced by the test's; a
block whose first line says it is not run (Spark, which needs a JVM) is the only one left out.
The removal and re-collection snippets run last, and their effect is checked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from herocollector import CollectionService, ServiceConfig
from herocollector.output.delta import rows_of_run
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import build_run

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "tables.md"


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of one language, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A table ``exp-1`` with two runs, written by the service as the docs' JSON config says."""
    tmp = tmp_path_factory.mktemp("tables-docs")
    runs = tmp / "runs"
    first = build_run(runs / "run-0001", 21, n_records=300)
    second = build_run(runs / "run-0002", 22, n_records=300)
    config = ServiceConfig.from_arguments(
        save_template="{{ output_root }}/exp-1",
        output_root=str(tmp / "tables"),
        format="delta",
        columns={"experiment": "string", "measure": "string", "entity": "string"},
        partition_by=["measure"],
        allowed_roots=[str(runs)],
        state_dir=str(tmp / "state"),
        scan_interval=None,
        compact_interval=None,
    )
    collected: list[object] = []
    with CollectionService(config, on_collected=collected.append) as service:
        service.submit("logger", {"path": str(first.path)})
        service.submit("logger", {"path": str(second.path)})
        wait_for(lambda: len(collected) == 2, "both runs collected")
    return {"tables": tmp / "tables", "runs": runs, "run": first.path}


def localise(code: str, site: dict[str, Path]) -> str:
    return code.replace("/data/tables", str(site["tables"])).replace("/data/runs", str(site["runs"]))


def test_the_json_config_of_the_docs_is_valid() -> None:
    import json

    [config] = [json.loads(b) for b in blocks(DOC.read_text(encoding="utf-8"), "json")]
    arguments = {**config["arguments"], "state_dir": "/tmp/unused-state"}
    assert ServiceConfig.from_arguments(**arguments).format.is_table


def test_every_python_snippet_runs_and_removal_then_recollection_work(site: dict[str, Path]) -> None:
    text = DOC.read_text(encoding="utf-8")
    python = [b for b in blocks(text, "python") if not b.lstrip().startswith("# not run")]
    assert len(python) >= 6, "the reading snippets are all there"
    table = str(site["tables"] / "exp-1")
    run = str(site["run"])
    removal = [b for b in python if ".delete(" in b]
    assert len(removal) == 1
    for code in (b for b in python if b not in removal):
        namespace: dict[str, object] = {}
        exec(compile(localise(code, site), str(DOC), "exec"), namespace)
    before = rows_of_run(DeltaTable(table), run)
    assert before == 300
    exec(compile(localise(removal[0], site), str(DOC), "exec"), {})
    assert rows_of_run(DeltaTable(table), run) == 0
    [recollect] = [b for b in blocks(text, "sh") if "herocollector collect" in b]
    command = shlex.split(localise(recollect, site).replace("\\\n", " "))
    assert command[0] == "herocollector"
    done = subprocess.run(
        [sys.executable, "-m", "herocollector", *command[1:], "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert rows_of_run(DeltaTable(table), run) == before, "the run is back, once"


def test_the_readme_delta_snippet_runs(site: dict[str, Path]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Reading the outputs", 1)[1].split("\n## ", 1)[0]
    delta = [b for b in blocks(section, "python") if "delta" in b.lower()]
    assert delta, "the README shows how to read a Delta table"
    for code in delta:
        exec(compile(localise(code, site), "README.md", "exec"), {})
