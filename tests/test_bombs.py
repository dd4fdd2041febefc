"""Decompression bombs and oversized records: refused with a clear error, in bounded memory.

A segment is untrusted input. A few kilobytes of zstd can decompress to gigabytes, and one
record can claim any number of elements. The decoder must refuse such input with a
``SegmentError`` that names the file and the offset of the frame, and its peak memory must
stay within the bound documented in ``docs/architecture.md`` ("The decoder"), whatever the
input. Peak memory is measured in a child process (``ru_maxrss``), from a baseline taken
after the imports and a first decode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from herocollector.decode.codec import (
    DEFAULT_CHUNK_BYTES,
    MAX_FRAME_BYTES,
    MAX_RECORD_BYTES,
    Records,
    SegmentDecoder,
    encode_segment,
)
from herocollector.errors import SegmentError

MIB = 1 << 20
GIB = 1 << 30


def memory_bound(chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_record_bytes: int = MAX_RECORD_BYTES) -> int:
    """The decoder's documented peak memory, in bytes (docs/architecture.md, "Memory")."""
    return 32 * chunk_bytes + 12 * max(max_record_bytes, chunk_bytes) + 32 * MIB


def zstd_bomb(path: Path, head: bytes, body: bytes, total: int, *, content_size: bool) -> int:
    """Write one zstd frame of ``head`` and then ``body`` repeated to ``total`` bytes, built with
    zstandard's streaming compressor (the content is never held); returns the file size."""
    compressor = zstandard.ZstdCompressor(level=1)
    stream = compressor.compressobj(size=len(head) + total) if content_size else compressor.compressobj()
    block = body * (MIB // len(body))
    parts = [stream.compress(head)]
    for _ in range(total // len(block)):
        parts.append(stream.compress(block))
    parts.append(stream.flush())
    path.write_bytes(b"".join(parts))
    return path.stat().st_size


CHILD = r"""
import json, resource, sys
from herocollector.decode.codec import Records, SegmentDecoder, encode_segment
from herocollector.errors import SegmentError

warm = encode_segment(Records.from_lists([0, 1] * 500, list(range(1000)), [[1, 2]] * 1000, [[3, 4]] * 1000))
for _ in range(3):  # kernels loaded, pools and zstd contexts warm: the baseline is the decoder at rest
    SegmentDecoder([0, 1]).decode_bytes(warm)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows, error = 0, None
try:
    for columns in SegmentDecoder([0, 1]).columns([sys.argv[1]]):
        rows += len(columns)  # handed on and dropped, as a writer does
except SegmentError as exc:
    error = {"type": type(exc).__name__, "path": str(exc.path), "offset": exc.offset, "message": str(exc)}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth": (after - before) * 1024, "rows": rows, "error": error}))
"""


def decode_in_child(path: Path) -> dict[str, object]:
    """Decode ``path`` in a fresh interpreter; its peak memory growth, rows and error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


RECORD_2GIB = b"\x01\x00" + bytes([0x80, 0x80, 0x80, 0x80, 0x04])  # stream 1, delta 0, n = 2**30 elements
"""The header of a record of 2**30 elements: with one-byte index gaps and values, 2 GiB."""


@pytest.mark.parametrize("content_size", [False, True], ids=["streamed", "declared"])
def test_single_record_bomb_is_refused_in_bounded_memory(tmp_path: Path, content_size: bool) -> None:
    path = tmp_path / "segment-000000.seg.zst"
    size = zstd_bomb(path, RECORD_2GIB, b"\x00", 2 * GIB, content_size=content_size)
    assert size < 100_000  # about 2 GiB from a few tens of kilobytes
    result = decode_in_child(path)
    error = result["error"]
    assert isinstance(error, dict), result
    assert error["type"] == "SegmentError" and error["path"] == str(path) and error["offset"] == 0
    limit = MAX_FRAME_BYTES if content_size else MAX_RECORD_BYTES
    assert f"over the limit of {limit}" in str(error["message"])
    assert result["rows"] == 0
    assert isinstance(result["growth"], int) and result["growth"] <= memory_bound(), result


def test_many_record_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """2 GiB of three-byte empty records in one frame: refused at the frame limit."""
    path = tmp_path / "segment-000000.seg.zst"
    valid = encode_segment(Records.from_lists([0, 1], [5, 6], [[1], []], [[2], []]))
    zstd_bomb(path, b"", b"\x00", 2 * GIB, content_size=False)
    path.write_bytes(valid + path.read_bytes())
    result = decode_in_child(path)
    error = result["error"]
    assert isinstance(error, dict), result
    assert error["path"] == str(path) and error["offset"] == len(valid)
    assert f"more than {MAX_FRAME_BYTES} bytes" in str(error["message"])
    # Rows before the limit were handed on (a writer aborts its files on the error), never all 700 million.
    assert isinstance(result["rows"], int) and result["rows"] <= 2 + MAX_FRAME_BYTES // 3
    assert isinstance(result["growth"], int) and result["growth"] <= memory_bound(), result


def test_record_growing_past_the_limit_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A record whose header is small but whose varints are long: refused once its bytes pass the limit."""
    path = tmp_path / "segment-000000.seg.zst"
    head = b"\x01\x00" + bytes([0x80, 0x80, 0x80, 0x01])  # n = 2**21 elements, each of two ten-byte varints
    zstd_bomb(path, head, b"\x80" * 9 + b"\x01", 64 * MIB, content_size=False)
    result = decode_in_child(path)
    error = result["error"]
    assert isinstance(error, dict), result
    assert error["offset"] == 0 and f"over the limit of {MAX_RECORD_BYTES} bytes per record" in str(error["message"])
    assert isinstance(result["growth"], int) and result["growth"] <= memory_bound(), result


def test_the_largest_record_decodes_within_the_bound(tmp_path: Path) -> None:
    """A record of just under ``MAX_RECORD_BYTES``, in one frame streamed in pieces: one row, in bounded memory.

    Its columns take 16 bytes per element (of two bytes here), its bytes are held whole: the
    bound's term for the record."""
    path = tmp_path / "segment-000000.seg.zst"
    n = (MAX_RECORD_BYTES - 16) // 2
    head = b"\x01\x00" + leb128(n) + b"\x00"  # stream 1, delta 0, n elements from index 0
    content = head + bytes(n - 1) + b"\x02" * n  # gaps 0, values 1
    path.write_bytes(zstandard.ZstdCompressor(level=1, write_content_size=False).compress(content))
    result = decode_in_child(path)
    assert result["error"] is None and result["rows"] == 1, result
    assert isinstance(result["growth"], int) and result["growth"] <= memory_bound(), result


def leb128(value: int) -> bytes:
    """The LEB128 bytes of ``value``."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def big_record(n: int) -> Records:
    """One record of ``n`` elements (indices 0..n-1, values 1)."""
    return Records(
        np.array([1], dtype=np.uint32),
        np.array([7], dtype=np.int64),
        np.array([0, n], dtype=np.int64),
        np.arange(n, dtype=np.int64),
        np.ones(n, dtype=np.int64),
    )


def test_records_larger_than_the_chunk_decode_up_to_the_limit(tmp_path: Path) -> None:
    """The limit is on one record's bytes: a record just under it decodes; just over, it is refused."""
    limit = 256 * 1024
    fits = big_record(limit // 2 - 8)  # two bytes per element, and a short header
    path = tmp_path / "segment-000000.seg.zst"
    path.write_bytes(encode_segment(fits))
    decoder = SegmentDecoder([0, 1], chunk_bytes=4096, max_record_bytes=limit)
    got = Records.concat(decoder.decode_file(path))
    assert got.equals(fits)
    over = encode_segment(big_record(limit // 2 + 8))
    path.write_bytes(encode_segment(fits) + over)
    with pytest.raises(SegmentError, match=f"over the limit of {limit} bytes per record") as info:
        list(SegmentDecoder([0, 1], chunk_bytes=4096, max_record_bytes=limit).decode_file(path))
    assert info.value.path == str(path) and info.value.offset == len(encode_segment(fits))
    # A record that fits in a chunk is never refused: the limit is at least chunk_bytes.
    assert Records.concat(SegmentDecoder([0, 1], chunk_bytes=limit * 4, max_record_bytes=4096).decode_file(path))


def test_frame_too_large_to_hold_compressed_is_refused(tmp_path: Path) -> None:
    """An incompressible frame larger than the frame limit is refused before it is held whole."""
    rng = np.random.default_rng(5)
    payload = rng.integers(0, 128, size=3 * MIB, dtype=np.uint8).tobytes()  # random one-byte varints
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(payload)
    assert len(frame) > 2 * MIB
    path = tmp_path / "segment-000000.seg.zst"
    valid = encode_segment(big_record(3))
    path.write_bytes(valid + frame)
    with pytest.raises(SegmentError, match="over the limit of 1048576") as info:
        list(SegmentDecoder([0, 1], chunk_bytes=64 * 1024, max_frame_bytes=MIB).decode_file(path))
    assert info.value.path == str(path) and info.value.offset == len(valid)
