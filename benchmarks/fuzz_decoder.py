#!/usr/bin/env python
"""Seeded fuzzer of the ``.seg.zst`` segment decoder: the command line.

The generators, oracles and the run are in :mod:`herocollector.testing.fuzz` (see its
docstring for the case kinds, the oracles and the failure kinds). Failing inputs go to
``benchmarks/results/fuzz_failures/`` unless ``--failures-dir`` says otherwise.

Examples::

    python benchmarks/fuzz_decoder.py --cases 100000
    python benchmarks/fuzz_decoder.py --cases 100000 --workers 2   # two processes, the same cases
    python benchmarks/fuzz_decoder.py --cases 100000 --chunk-bytes 4096 --json benchmarks/results/fuzz.json
    NUMBA_BOUNDSCHECK=1 python benchmarks/fuzz_decoder.py --cases 20000
    python benchmarks/fuzz_decoder.py --seed 7 --start 12345 --cases 1   # replay one case
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # fuzz this checkout's herocollector, not an installed one

from herocollector.testing.fuzz import main  # noqa: E402 - only once this checkout is on sys.path

if __name__ == "__main__":
    sys.exit(main(failures_dir=HERE / "results" / "fuzz_failures"))
