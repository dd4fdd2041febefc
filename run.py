#!/usr/bin/env python3
"""Quick start: ``python3 run.py demo`` runs the end-to-end demo, ``python3 run.py test`` the tests.

Both create ``.venv`` (Python 3.11+, standard library only) and install the project into it
with everything it needs, so they work on a fresh machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".herocollector-installed"


def ensure_environment() -> None:
    """Create the virtual environment and install the project with its test extra, once."""
    if sys.version_info < (3, 11):  # noqa: UP036 - run by any python3, before the venv exists
        sys.exit(f"herocollector needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("installing herocollector and its dependencies ...", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted)


def main() -> int:
    """Run the task named on the command line (extra arguments are passed on); its exit status."""
    tasks = {
        "demo": [str(BIN / "herocollector"), "demo"],
        # Two pytest-xdist workers; idle ones take tests from busy ones ("worksteal"), and
        # tests/conftest.py puts the long tests first. ``python3 run.py test -n 0`` runs in one process.
        "test": [str(PYTHON), "-m", "pytest", "-q", "-n", "2", "--dist", "worksteal"],
        "bench": [str(PYTHON), str(ROOT / "benchmarks" / "collect_bench.py")],
    }
    if len(sys.argv) < 2 or sys.argv[1] not in tasks:
        print(f"usage: python3 run.py {{{'|'.join(tasks)}}} [extra arguments]", file=sys.stderr)
        return 2
    ensure_environment()
    command = tasks[sys.argv[1]] + sys.argv[2:]
    return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
