"""The README's remote-call snippet, verbatim, against a running actor: 10 fresh processes in a row.

A new user copies it into a Python process of their own, so each run is a new interpreter that
must discover the actor itself (a bare ``RemoteHERO`` lost that race about 6 times in 10). The
snippet names the default realm ``heros``; the actor is kept from every other HEROS process on
the machine by a loopback-only Zenoh configuration (it listens on a TCP port of 127.0.0.1, the
snippet's process connects to it, multicast scouting off on both), so nothing else can see it.
"""

from __future__ import annotations

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
