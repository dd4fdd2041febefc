"""The package as users get it: the public API, the shipped configs, a regular install, lint and types."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import herocollector

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_API = [
    "CollectionService",
    "Collector",
    "CollectorArchiver",
    "CollectorError",
    "ConfigError",
    "DoneTimeout",
    "MetadataError",
    "OutputError",
    "RunWriter",
    "SegmentError",
    "ServiceConfig",
    "UnknownStreamError",
    "connect",
]


def test_the_public_api_is_small_and_pinned() -> None:
    assert sorted(herocollector.__all__) == PUBLIC_API
    for name in PUBLIC_API:
        assert getattr(herocollector, name).__name__ == name


def test_one_exception_tree() -> None:
    from herocollector import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, errors.CollectorError) for c in classes)
    assert issubclass(errors.ConfigError, ValueError)
    assert not errors.ConfigError.retryable and not errors.RunRefused.retryable
    assert errors.DoneTimeout.retryable and errors.CollectorError.retryable
    for cls in classes:  # the diagram in the module docstring names every class
        assert cls.__name__ in (errors.__doc__ or ""), cls.__name__


@pytest.fixture
def wheel(core_wheel: Path) -> Path:
    """The working tree's wheel (built once per session, in ``conftest.py``)."""
    return core_wheel


def test_the_wheel_ships_the_boss_configs_and_py_typed(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "herocollector/boss_configs/collector.json" in names
    assert "herocollector/boss_configs/demo_logger.json" in names
    assert "herocollector/py.typed" in names


@pytest.mark.e2e
def test_the_demo_runs_from_a_regular_install_in_any_directory(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip puts into site-packages, without the source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import herocollector; print(herocollector.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(site))
    result = subprocess.run(
        [sys.executable, "-m", "herocollector", "demo", "--runs", "1", "--records", "300"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: 1/1 runs collected" in result.stdout


def test_ruff_passes() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra"
    result = subprocess.run(
        [ruff, "check", "herocollector", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]


def test_the_actor_takes_exactly_the_service_arguments() -> None:
    import inspect

    from herocollector import CollectorArchiver, ServiceConfig

    parameters = inspect.signature(CollectorArchiver.__init__).parameters
    named = [n for n, p in parameters.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    assert sorted(named) == sorted(ServiceConfig.argument_names())
    defaults = inspect.signature(ServiceConfig.from_arguments).parameters
    for name in named:
        if parameters[name].default is not inspect.Parameter.empty:  # object_selector is required by the actor
            assert parameters[name].default == defaults[name].default, name


@pytest.mark.parametrize(
    ("module", "arguments", "extra"),
    [
        ("boto3", {"output_root": "s3://bucket/prefix"}, "herocollector[s3]"),
        ("psycopg", {"output_root": "/tmp/out", "journal": "postgresql://db.lab/hc"}, "herocollector[postgres]"),
    ],
)
def test_a_feature_whose_extra_is_missing_fails_at_configuration_naming_the_extra(
    module: str, arguments: dict[str, str], extra: str
) -> None:
    # A fresh interpreter in which the extra's package cannot be imported, as after a core-only install.
    probe = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Missing())
from herocollector import ServiceConfig
from herocollector.errors import ConfigError
try:
    ServiceConfig.from_arguments(save_template="{{{{ measure }}}}.arrow", **{arguments!r})
except ConfigError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert extra in result.stdout, result.stdout + result.stderr


def test_the_wheel_carries_the_license(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    licenses = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
    assert licenses, f"no LICENSE in the wheel's metadata: {names}"
    assert b"MIT License" in zipfile.ZipFile(wheel).read(licenses[0])
