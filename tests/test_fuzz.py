"""Decoder fuzzing with the seeded fuzzer of ``herocollector.testing.fuzz``.

The fuzzer generates valid, mutated, random and header-damaged segments (see its docstring)
and checks that ``SegmentDecoder`` either returns records or raises a ``CollectorError`` with
a sane offset, never another exception, never hanging, and always with the same outcome as
its oracles (the encoded records, the pure-Python reference decoder, the NumPy decoder).

* ``test_fuzz_smoke`` runs about 2,000 cases on every test run (a few seconds);
* ``test_fuzz_100k`` is the full acceptance run of 100,000 cases (``-m slow``);
* the other tests check the harness itself: a decoder that misbehaves must be caught.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from herocollector.decode.codec import Records, SegmentDecoder
from herocollector.errors import SegmentError
from herocollector.testing import fuzz


def assert_no_failures(report) -> None:
    """Fail with the fuzzer's own summary (reproducers included) when a case failed."""
    assert not report.failures, "\n" + fuzz.format_report(report)


def test_fuzz_smoke(tmp_path: Path) -> None:
    report = fuzz.run_fuzz(2_000, seed=20240611, failures_dir=tmp_path, pool_size=120)
    assert_no_failures(report)
    assert report.cases == 2_000
    # Every kind of case ran, and the interesting outcomes all occurred.
    assert set(report.by_kind) == set(fuzz.ROTATION) | {"bomb"}
    for outcome in ("ok-exact", "ok-decoded-mutant", "segment-error", "unknown-stream-error"):
        assert report.counts[outcome] > 0, outcome
    valid = sum(1 for i in range(2_000) if fuzz.kind_of(i) == "valid")
    assert report.by_kind["valid"]["ok-exact"] == valid


SHARES = 10
"""The 100,000 cases of the acceptance run, in shares the suite's workers take side by side."""


@pytest.mark.slow
@pytest.mark.parametrize("share", range(SHARES))
def test_fuzz_100k(tmp_path: Path, share: int) -> None:
    """The acceptance run: 100,000 cases, mixed chunk sizes (a quarter of them small), in ten shares.

    Share ``k`` runs the cases ``k * 10,000`` to ``(k + 1) * 10,000 - 1`` of the one run with seed
    0: each case is exactly the case it is alone, with every check, and the ten shares together
    are the whole run. As shares, the suite's workers take them among the other tests instead of
    one worker running them all while the other runs everything else.
    """
    size = 100_000 // SHARES
    report = fuzz.run_fuzz(size, seed=0, start=share * size, failures_dir=tmp_path)
    print("\n" + fuzz.format_report(report))
    assert report.cases == size
    assert_no_failures(report)


def test_a_run_in_processes_is_the_run_in_one(tmp_path: Path) -> None:
    """Two worker processes run exactly the cases one process runs, with the same outcomes."""
    alone = fuzz.run_fuzz(300, seed=11, start=700, failures_dir=tmp_path, pool_size=40)
    split = fuzz.run_fuzz(300, seed=11, start=700, failures_dir=tmp_path, pool_size=40, workers=2)
    assert split.cases == alone.cases == 300
    assert split.counts == alone.counts and split.by_kind == alone.by_kind
    assert split.bytes_fed == alone.bytes_fed and not split.failures and not alone.failures
    assert "bomb" in split.by_kind  # case 999 is a bomb: the share boundary (850) is inside the run


def test_cases_are_reproducible() -> None:
    """Case ``i`` of seed ``s`` is the same bytes however the run is started (replay works)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    ctx_a = fuzz.Context(fuzz.build_pool(5, 40, dctx), dctx, None, SegmentDecoder, 5.0, False, True)
    ctx_b = fuzz.Context(fuzz.build_pool(5, 40, dctx), dctx, None, SegmentDecoder, 5.0, False, True)
    for index in (0, 1, 2, 3, 7, 10, 11, 12345):
        a, b = fuzz.make_case(index, 5, ctx_a), fuzz.make_case(index, 5, ctx_b)
        assert (a.kind, a.data, a.chunk_bytes, a.selected, a.read_size) == (
            b.kind,
            b.data,
            b.chunk_bytes,
            b.selected,
            b.read_size,
        )


def test_reference_decoder_agrees_with_encoder_on_valid_cases() -> None:
    """The differential oracle is only as good as the reference decoder: check it."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    ctx = fuzz.Context(fuzz.build_pool(9, 20, dctx), dctx, None, SegmentDecoder, 5.0, False, True)
    valid = [i for i in range(600) if fuzz.kind_of(i) == "valid"]
    for index in valid:
        case = fuzz.make_case(index, 9, ctx)
        ref = fuzz.reference_decode(case.data, case.known, case.selected, dctx)
        assert ref.records is not None, (index, ref.reason)
        assert ref.records.equals(case.expected), index


class _MisbehavingDecoder(SegmentDecoder):
    """A decoder that breaks the contract in every way the fuzzer must notice."""

    def decode_stream(self, fh: BinaryIO, name: str | Path) -> Iterator[Records]:
        data = fh.read()
        behaviour = len(data) % 11
        if behaviour == 1:
            raise IndexError("index 99 is out of bounds")  # not a CollectorError
        if behaviour == 2:
            time.sleep(30)  # hangs (interrupted by the watchdog)
        if behaviour == 3:
            raise SegmentError("bad", name, len(data) + 1)  # offset past the end
        records = Records.concat(super().decode_stream(io.BytesIO(data), name))
        if behaviour == 4 and len(records):
            records = fuzz.take(records, fuzz.np.arange(len(records)) > 0)  # loses a record
        yield records


def test_fuzzer_catches_a_misbehaving_decoder(tmp_path: Path) -> None:
    started = time.perf_counter()
    report = fuzz.run_fuzz(
        150, seed=1, failures_dir=tmp_path, timeout=0.1, pool_size=40, decoder_factory=_MisbehavingDecoder
    )
    kinds = {f["failure"] for f in report.failures}
    assert {"wrong-exception", "hang", "bad-offset"} <= kinds
    assert kinds & {"not-round-tripping", "reference-mismatch"}
    assert time.perf_counter() - started < 60
    # Every failure left a reproducer and a description that names how to replay it.
    for failure in report.failures:
        blob = Path(failure["file"]).read_bytes()
        assert len(blob) == failure["bytes"]
        info = json.loads(Path(failure["file"]).with_suffix(".json").read_text())
        assert info["hex"].startswith(blob[:16].hex())
        assert f"--start {failure['case']} --cases 1" in info["replay"]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fuzz.json"
    status = fuzz.main(
        [
            "--cases",
            "60",
            "--seed",
            "3",
            "--chunk-bytes",
            "4096",
            "--json",
            str(out),
            "--quiet",
            "--failures-dir",
            str(tmp_path / "f"),
        ]
    )
    figures = json.loads(out.read_text())
    assert status == (1 if figures["failures"] else 0)
    assert figures["cases"] == 60 and figures["chunk_bytes"] == 4096
    assert sum(figures["outcomes"].values()) == 60
    assert "cases/s" in capsys.readouterr().out


class _NicenessCheckingDecoder(SegmentDecoder):
    """The real decoder, in a process whose niceness must be the one the test set in the environment."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        wanted = int(os.environ["HC_TEST_FUZZ_NICENESS"])
        if os.nice(0) != wanted:
            raise IndexError(f"niceness {os.nice(0)}, not {wanted}")  # a wrong-exception failure
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("nice", [0, 3])
def test_worker_processes_run_at_the_niceness_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nice: int) -> None:
    """``nice`` lowers the workers' priority (and only theirs): the 100k run leaves the CPU to the e2e tests."""
    monkeypatch.setenv("HC_TEST_FUZZ_NICENESS", str(os.nice(0) + nice))
    kwargs = {"failures_dir": tmp_path, "pool_size": 10, "decoder_factory": _NicenessCheckingDecoder}
    report = fuzz.run_fuzz(12, seed=5, workers=2, nice=nice, **kwargs)
    assert report.cases == 12 and not report.failures
    # The same decoder in this process, at another niceness, fails every case: the check can fail.
    monkeypatch.setenv("HC_TEST_FUZZ_NICENESS", str(os.nice(0) + 1))
    alone = fuzz.run_fuzz(12, seed=5, **kwargs)
    assert {f["failure"] for f in alone.failures} == {"wrong-exception"} and len(alone.failures) == 12
