"""The README's snippets, verbatim: the remote calls against a running actor, the reading snippets on an actor's outputs.

A new user copies the remote-call snippet into a Python process of their own, so each run is a
new interpreter that must discover the actor itself (a bare ``RemoteHERO`` lost that race about
6 times in 10). The snippet names the default realm ``heros``; the actor is kept from every
other HEROS process on the machine by a loopback-only Zenoh configuration (it listens on a TCP
port of 127.0.0.1, the snippet's process connects to it, multicast scouting off on both), so
nothing else can see it.

The reading snippets ("Reading the outputs") run on what an actor configured as
``boss_configs/collector.json`` (the README's config) wrote, once per format: ``file``,
``stream`` and ``parquet`` (the template's extension changed to match). The one change made to
them is the README's placeholder ``/data/collected`` replaced by the actor's ``output_root``.
They run statement by statement as in a REPL, so an expression's value (a DuckDB relation) is
kept, and checked, as a user would see it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.launcher import BossProcess, load_config
from herocollector.testing.actors import Env, collected
from herocollector.testing.servers import free_port

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parent.parent / "README.md"
TRIES = 10


def loopback(*, listen: int | None = None, connect: int | None = None) -> str:
    """A Zenoh peer configuration on loopback only."""
    config: dict[str, Any] = {"mode": "peer", "scouting": {"multicast": {"enabled": False}}}
    if listen is not None:
        config["listen"] = {"endpoints": [f"tcp/127.0.0.1:{listen}"]}
    if connect is not None:
        config["connect"] = {"endpoints": [f"tcp/127.0.0.1:{connect}"]}
    return json.dumps(config)


def remote_snippet() -> str:
    """The Python block of the README's "Remote calls from Python" section."""
    section = README.read_text(encoding="utf-8").split("## Remote calls from Python", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the section needs a python code block"
    return block.group(1)


@pytest.fixture(scope="module")
def actor_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The loopback port of a collector actor in realm ``heros``, as the snippet expects it."""
    tmp = tmp_path_factory.mktemp("readme")
    port = free_port()
    arguments = {
        "default_metadata": {"output_root": str(tmp / "out")},
        "allowed_roots": [str(tmp / "runs")],
        "state_dir": str(tmp / "state"),
        "scan_interval": None,
        "max_retries": 0,
    }
    boss = BossProcess(
        load_config("collector.json", arguments), "heros", tmp / "boss", {"HEROS_ZENOH_CONFIG": loopback(listen=port)}
    )
    boss.start()
    try:
        yield port
    finally:
        boss.stop(timeout=10)


def test_the_snippet_uses_the_connection_helper() -> None:
    snippet = remote_snippet()
    assert "herocollector.connect(" in snippet
    assert "RemoteHERO(" not in snippet


def test_the_remote_snippet_runs_verbatim_10_times_in_a_row(actor_port: int, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(remote_snippet() + "\nprint('SNIPPET-OK')\n")
    env = {**os.environ, "HEROS_ZENOH_CONFIG": loopback(connect=actor_port)}
    for attempt in range(1, TRIES + 1):
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
        )
        assert result.returncode == 0, f"try {attempt} of {TRIES}:\n{result.stdout}\n{result.stderr[-3000:]}"
        assert "SNIPPET-OK" in result.stdout, result.stdout


# ----------------------------------------------------------------------------------------
# The reading snippets, on an actor's outputs
# ----------------------------------------------------------------------------------------

PLACEHOLDER = "/data/collected"
SUFFIX = {"file": ".arrow", "stream": ".arrows", "parquet": ".parquet"}
RUN_NAMES = ("run-0001-1a2b3c", "run-0002-4d5e6f")  # the README reads demo/run-0001-1a2b3c/stock.arrow


def reading_snippets() -> dict[str, list[str]]:
    """The Python blocks of the README's "Reading the outputs" section, by the format they read."""
    section = README.read_text(encoding="utf-8").split("## Reading the outputs", 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[str]] = {"file": [], "stream": [], "parquet": [], "delta": []}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        if "deltalake" in block or "scan_delta" in block:
            found["delta"].append(block)
        elif ".arrows" in block:
            found["stream"].append(block)
        elif "parquet" in block:
            found["parquet"].append(block)
        else:
            found["file"].append(block)
    return found


def run_snippet(code: str) -> tuple[dict[str, Any], list[Any]]:
    """Run ``code`` statement by statement as a REPL does; its variables, and the values of its expressions."""
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    shown: list[Any] = []
    for node in ast.parse(code).body:
        if isinstance(node, ast.Expr):
            shown.append(eval(compile(ast.Expression(node.value), "README.md", "eval"), namespace))
        else:
            exec(compile(ast.Module([node], type_ignores=[]), "README.md", "exec"), namespace)
    return namespace, shown


@pytest.fixture(scope="module", params=list(SUFFIX))
def actor_outputs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(format, output_root, rows the journal records) after an actor with the README's config collected two runs."""
    fmt = request.param
    env = Env(tmp_path_factory.mktemp(f"reading-{fmt}"))
    try:
        arguments = load_config("collector.json")["arguments"]
        arguments.update(
            save_template=arguments["save_template"].replace(".arrow", SUFFIX[fmt]),
            format=fmt,
            output_root=None,
            default_metadata={"output_root": str(env.out)},
            allowed_roots=[str(env.runs)],
            state_dir=str(env.state),
        )
        actor = env.actor(**arguments)
        rows = sum(collected(actor, env.run(name)).rows or 0 for name in RUN_NAMES)
        assert rows > 0
        yield fmt, env.out, rows
    finally:
        env.close()


def test_the_reading_section_has_snippets_for_every_format() -> None:
    snippets = reading_snippets()
    assert len(snippets["file"]) == 3 and len(snippets["stream"]) == 1 and len(snippets["parquet"]) == 1
    assert all(PLACEHOLDER in block for fmt in SUFFIX for block in snippets[fmt])


def test_the_reading_snippets_run_verbatim_on_the_actors_outputs(actor_outputs: Any) -> None:
    fmt, out, rows = actor_outputs
    assert not [p for p in out.rglob("*") if not p.name.endswith(SUFFIX[fmt]) and p.is_file()]  # data files only
    for block in reading_snippets()[fmt]:
        variables, shown = run_snippet(block.replace(PLACEHOLDER, str(out)))
        everything = variables.get("everything")
        if everything is not None:  # every row under output_root, as many as the journal records
            assert (everything.num_rows if hasattr(everything, "num_rows") else everything.height) == rows
        if "per_entity" in variables:
            assert variables["per_entity"]["len"].sum() == rows
        if "frame" in variables:
            assert variables["frame"].height == rows
        if "table" in variables:  # one file: the stock output of the first run
            metadata = variables["table"].schema.metadata
            assert metadata[b"herocollector.logger_path"].decode().endswith(RUN_NAMES[0])
        relations = [value for value in shown if value is not None]  # DuckDB's answers
        if "runs" in variables:
            assert variables["runs"].count_rows() == rows
        if relations:
            counts = relations[0].fetchall()
            assert sum(row[1] for row in counts) == rows and {row[0] for row in counts} == {"entity-0", "entity-1"}
        for relation in relations[1:]:
            assert len(relation.fetchall()) == 10
