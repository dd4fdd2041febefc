"""The project's own logger-directory writer (``RunWriter``) and the simulated runs written with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from herocollector import RunWriter
from herocollector.actor.demo import write_simulated_run
from herocollector.decode.codec import SegmentDecoder
from herocollector.decode.records import Records


def segments(path: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(path.glob("*.seg.zst"))]


def decoded(path: Path, streams: int) -> Records:
    files = sorted(path.glob("*.seg.zst"))
    return Records.concat(SegmentDecoder(range(1, streams + 1)).decode_files(files))


def two_streams(writer: RunWriter) -> list[int]:
    return [
        writer.register_stream({"measure": "a"}, epoch_scale=1e-3, value_scale=1e-2),
        writer.register_stream({"measure": "b"}, epoch_scale=0.5, value_scale=3.0),
    ]


def test_record_many_writes_what_as_many_record_calls_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    count = 5000  # several writes of 64 frames, and rotation
    nnz = rng.integers(0, 6, size=count)
    offsets = np.concatenate([[0], np.cumsum(nnz)])
    indices = np.concatenate([np.sort(rng.choice(1 << 40, size=n, replace=False)) for n in nnz])
    values = rng.normal(0, 100, size=indices.size)
    epochs = np.cumsum(rng.exponential(0.3, size=count)) - 50.0  # negative ticks too
    sids = rng.integers(1, 3, size=count)

    def write(name: str, head: int | None) -> Path:
        writer = RunWriter(tmp_path / name, rotate_bytes=20_000, records_per_frame=4)
        assert two_streams(writer) == [1, 2]
        for k in range(count if head is None else head):
            a, b = offsets[k], offsets[k + 1]
            writer.record(int(sids[k]), float(epochs[k]), indices[a:b], values[a:b])
        if head is not None:  # record() first, then record_many: in order
            a = offsets[head]
            writer.record_many(sids[head:], epochs[head:], offsets[head:] - a, indices[a:], values[a:])
        writer.close()
        return tmp_path / name

    one, many, mixed = write("one", None), write("many", 0), write("mixed", 10)
    assert len(segments(one)) > 2
    assert segments(many) == segments(one)
    assert decoded(mixed, 2).equals(decoded(one, 2))  # frames cut elsewhere, the same records


def test_record_many_refuses_what_record_refuses(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path / "run")
    sid = two_streams(writer)[0]
    one = np.array([sid])
    with pytest.raises(KeyError, match="unknown stream id 9"):
        writer.record_many(np.array([9]), np.zeros(1), np.array([0, 1]), np.array([3]), np.array([1.0]))
    with pytest.raises(ValueError, match="offsets"):
        writer.record_many(one, np.zeros(1), np.array([0, 2]), np.array([3]), np.array([1.0]))
    with pytest.raises(ValueError, match="one value per index"):
        writer.record_many(one, np.zeros(1), np.array([0, 1]), np.array([3]), np.array([1.0, 2.0]))
    writer.record_many(np.zeros(0, int), np.zeros(0), np.array([0]), np.zeros(0, int), np.zeros(0))  # nothing
    writer.close()
    assert segments(tmp_path / "run") == []


def test_a_simulated_run_is_the_same_through_both_writers_and_as_described(tmp_path: Path) -> None:
    own = write_simulated_run(tmp_path / "own", records=9000, entities=2, seed=4)
    real = write_simulated_run(tmp_path / "real", records=9000, entities=2, seed=4, backend="data_logger")
    assert own["records"] == real["records"] == 9000 and own["streams"] == real["streams"] == 6
    own_records, real_records = decoded(tmp_path / "own", 6), decoded(tmp_path / "real", 6)
    assert own_records.equals(real_records)
    assert own_records.stream_ids.tolist() == [1 + k % 6 for k in range(9000)]
    ticks = own_records.ticks
    assert (np.diff(ticks) >= 0).all()  # the epochs rise (every stream has the same epoch scale)
    lengths = np.diff(own_records.offsets)
    assert lengths.max() <= 7 and (np.bincount(lengths, minlength=8) > 9000 / 8 * 0.8).all()  # 0 to 7, evenly
    for k in range(9000):
        chosen = own_records.indices[own_records.offsets[k] : own_records.offsets[k + 1]].tolist()
        assert chosen == sorted(set(chosen)) and all(0 <= i < 100 for i in chosen)
