"""Seeded fuzzer of the ``.seg.zst`` segment decoder (``herocollector.decode.codec.SegmentDecoder``).

The case generators, the oracles and the run live here, importable by the tests; the
command line is ``benchmarks/fuzz_decoder.py`` (or ``python -m herocollector.testing.fuzz``).

The decoder must, for ANY input bytes, either return records or raise a ``CollectorError``
subclass: never another exception, never hang. A ``SegmentError`` must carry an offset in
``0 <= offset <= len(data)``. This script checks that, and more, over a large number of
generated cases (100,000 by default), without hypothesis: every case is generated from its
own ``numpy.random.Generator`` seeded with ``(seed, case index)``, so any case can be
replayed alone with ``--seed S --start I --cases 1``.

Case kinds, in a fixed rotation:

``valid``
    Random records (stream ids from a known set, 0 records, empty records, huge and
    negative indices, full-range int64 ticks and quantised values), encoded with
    ``encode_segment`` (records_per_frame 1..50, several levels), sometimes re-framed
    (checksums, no content size, several blocks per frame, merged frames, empty zstd frames
    and skippable frames in between), decoded with a random ``selected`` subset, small
    ``chunk_bytes`` or short reads. Must decode EXACTLY to what was encoded.
``mutated``
    A segment from a precomputed pool with 1..4 byte-level mutations: bit flips, byte
    sets, truncation, insertion, deletion, duplication, zeroing, splicing two segments,
    dropping / duplicating / swapping / inserting whole frames.
``payload``
    Pool segments whose *decompressed* record bytes are mutated (unfinished varints,
    varints longer than ten bytes, huge ``n``, unknown stream ids, random bytes), then
    compressed again into intact zstd frames, or written as hand-built raw/RLE blocks:
    this reaches the record splitter, which random compressed bytes rarely do.
``header``
    Pool segments with the frame headers mutated specifically: magic number, frame header
    descriptor, window descriptor, frame content size, block headers, checksum.
``random``
    Purely random bytes (uniform, or biased towards small and 0x80 bytes).
``magic-random``
    Random bytes after the zstd magic ``28 B5 2F FD``, after a plausible frame header, or
    hand-built frames of raw/RLE blocks holding random record bytes.
``skippable``
    Skippable frames (magic ``0x184D2A5?``) with exact, short, long and huge sizes, around
    valid segments.
``bomb`` (every 1000th case instead of the rotation)
    A few hundred bytes of RLE blocks that decompress to 64 KiB .. 4 MiB: one huge valid
    record, a record declaring more elements than its frame holds, or very many empty
    records (optionally after a valid segment). The right answer is known in closed form.
    A correct decoder needs linear time; one that re-decodes a growing carry is caught by
    the watchdog.
``unknown-stream``
    Otherwise valid segments whose records reference stream ids that are not declared
    (including ids beyond uint32), or a decoder that declares no streams at all. Must raise
    ``UnknownStreamError`` naming the first such id and the offset of its frame.

Every case is compared with an oracle. ``valid`` cases must decode to exactly the encoded
records, ``bomb`` and ``unknown-stream`` cases to their closed-form answer, and every case
except bombs (megabytes, too slow for it) is also decoded by a slow, independent pure-Python
reference decoder (``zstandard`` decompressobj frame by frame, then varints and records by
hand) that reports the FIRST damaged frame. The decoder must have the same outcome: the same
records when the reference succeeds; when it fails, an error at exactly the reference's
offset, an ``UnknownStreamError`` exactly when the reference's first damage is an unknown
stream id (naming the same id), a ``SegmentError`` otherwise. Every case is also decoded by
the former vectorised NumPy decoder (``herocollector.testing.numpy_decoder``), a second
independent oracle that must agree on success or failure and on the records.

Outcomes: ``ok-exact`` (a valid segment decoded exactly), ``ok-decoded-mutant`` (damaged
input that still decodes, to the reference's records), ``segment-error``,
``unknown-stream-error``, ``other-collector-error``. FAILURES:

* ``wrong-exception``: not a CollectorError, or an error that does not name the segment;
* ``hang``: the per-case watchdog (SIGALRM, ``--timeout`` seconds) fired;
* ``bad-offset``: a SegmentError offset outside ``0..len(data)``;
* ``misplaced-offset``: in range, but not the first damaged frame the reference decoder
  finds (before it: the error names an intact frame; after it: damage was missed);
* ``not-round-tripping``: a valid segment did not decode to exactly what was encoded;
* ``wrong-error``: a required error (UnknownStreamError naming the first unknown id and its
  frame, or a bomb's SegmentError) did not come as required;
* ``reference-mismatch``: the decoder and the reference decoder disagree (records, success
  or failure, or the kind of error);
* ``oracle-mismatch``: the decoder and the NumPy decoder disagree (records, or success);
* ``bad-columns``: the returned Records are inconsistent;
* ``harness-error``: this script's own generator or reference decoder failed.

Each failure's input is written to ``--failures-dir`` as ``.bin`` plus a ``.json``
description (reason, generation notes, hex, the command that replays it).

Exit status: 0 with no failure, 1 otherwise. A hang that cannot be interrupted (stuck in C
code) makes a hard watchdog thread write the reproducer and exit with status 3.

Examples::

    python benchmarks/fuzz_decoder.py --cases 100000
    python benchmarks/fuzz_decoder.py --cases 100000 --workers 2   # in two processes, the same cases
    NUMBA_BOUNDSCHECK=1 python benchmarks/fuzz_decoder.py --cases 20000   # numba checks every index too
    python benchmarks/fuzz_decoder.py --cases 100000 --chunk-bytes 4096 --json benchmarks/results/fuzz.json
    python benchmarks/fuzz_decoder.py --seconds 60 --seed 7
    python benchmarks/fuzz_decoder.py --seed 7 --start 12345 --cases 1   # replay one case
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zstandard

from herocollector.decode import native
from herocollector.decode.codec import DEFAULT_CHUNK_BYTES, Records, SegmentDecoder, encode_segment
from herocollector.errors import CollectorError, SegmentError, UnknownStreamError

from .numpy_decoder import NumpySegmentDecoder

T = TypeVar("T")

DEFAULT_FAILURES_DIR = Path(tempfile.gettempdir()) / "herocollector-fuzz-failures"
"""Where failing inputs go unless told otherwise (the command line uses benchmarks/results/)."""

KNOWN_IDS: tuple[int, ...] = (0, 1, 2, 7, 300, 2**31, 2**32 - 1)
"""Stream ids every decoder declares (unless a case declares none)."""
UNKNOWN_IDS: tuple[int, ...] = (3, 8, 299, 301, 2**31 - 1, 2**31 + 1, 2**32, 2**33 + 5, 2**63, 2**64 - 1)
"""Stream ids that are never declared."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
M64 = (1 << 64) - 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SEGMENT_NAME = "fuzz/segment-000001.seg.zst"
SMALL_CHUNKS = (1, 4096, 4097, 5000, 8192, 65536)
"""chunk_bytes values drawn for "occasionally small" cases (below 4096 is raised to 4096)."""

ROTATION: tuple[str, ...] = (
    "valid",
    "mutated",
    "payload",
    "header",
    "random",
    "valid",
    "mutated",
    "magic-random",
    "payload",
    "skippable",
    "unknown-stream",
    "mutated",
)
BOMB_EVERY = 1000
"""Every 1000th case (index 999, 1999, ...) is a "bomb" instead of its rotation kind."""
OK_OUTCOMES = ("ok-exact", "ok-decoded-mutant", "segment-error", "unknown-stream-error", "other-collector-error")
FAILURE_KINDS = (
    "wrong-exception",
    "hang",
    "bad-offset",
    "misplaced-offset",
    "not-round-tripping",
    "wrong-error",
    "reference-mismatch",
    "oracle-mismatch",
    "bad-columns",
    "harness-error",
)


# ----------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------


def i64(value: int) -> int:
    """Wrap an integer to int64 (two's complement)."""
    value &= M64
    return value - (1 << 64) if value >> 63 else value


def zigzag(value: int) -> int:
    """Zigzag-encode a signed 64-bit integer (Python int in, Python int out)."""
    value = i64(value)
    return ((value << 1) ^ (value >> 63)) & M64


def unzigzag(value: int) -> int:
    """Invert :func:`zigzag` on a uint64."""
    return (value >> 1) if not value & 1 else -(value >> 1) - 1


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    """One of ``items``, drawn from the stream as ``rng.choice(items)`` draws it (one bounded integer).

    ``rng.choice`` would make a NumPy value of it (ints >= 2**63 become floats), and costs about
    six times as much on a short list: the fuzzer picks several times per case, and once per
    byte of a random record.
    """
    return items[int(rng.integers(len(items)))]


def leb128(value: int) -> bytes:
    """LEB128 bytes of an unsigned integer below 2**64."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def skippable_frame(payload: bytes, variant: int = 0, size: int | None = None) -> bytes:
    """A skippable frame (magic ``0x184D2A50 + variant``); ``size`` overrides the size field."""
    declared = len(payload) if size is None else size
    return bytes([0x50 | (variant & 15), 0x2A, 0x4D, 0x18]) + (declared & 0xFFFFFFFF).to_bytes(4, "little") + payload


def columns_problem(r: Records) -> str | None:
    """Why decoded columns are inconsistent, or None when they are fine."""
    for column in ("stream_ids", "ticks", "offsets", "indices", "quantised"):
        if not isinstance(getattr(r, column), np.ndarray):
            return f"{column} is not an ndarray"
    if r.stream_ids.dtype != np.uint32 or r.ticks.dtype != np.int64 or r.offsets.dtype != np.int64:
        return "wrong dtype"
    if r.indices.dtype != np.int64 or r.quantised.dtype != np.int64:
        return "wrong dtype"
    if r.offsets.size != r.stream_ids.size + 1 or r.ticks.size != r.stream_ids.size:
        return "column lengths differ"
    if r.offsets[0] != 0 or np.any(np.diff(r.offsets) < 0):
        return "offsets not increasing from 0"
    if r.offsets[-1] != r.indices.size or r.indices.size != r.quantised.size:
        return "offsets do not match indices/quantised"
    return None


def take(records: Records, keep: np.ndarray) -> Records:
    """The records selected by a boolean mask, with rebuilt offsets."""
    n = np.diff(records.offsets)
    offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(n[keep], out=offsets[1:])
    element_keep = np.repeat(keep, n)
    return Records(
        records.stream_ids[keep],
        records.ticks[keep],
        offsets,
        records.indices[element_keep],
        records.quantised[element_keep],
    )


def records_from_python(sids: list[int], ticks: list[int], offsets: list[int], idx: list[int], q: list[int]) -> Records:
    """Records from Python ints (the reference decoder's output)."""
    return Records(
        np.array(sids, dtype=np.uint64).astype(np.uint32),
        np.array(ticks, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
        np.array(idx, dtype=np.int64),
        np.array(q, dtype=np.int64),
    )


# ----------------------------------------------------------------------------------------
# zstd frames by hand
# ----------------------------------------------------------------------------------------


@dataclass
class FrameInfo:
    """Layout of one frame of a well-formed segment (positions are absolute offsets)."""

    start: int
    end: int
    skippable: bool
    fhd: int = -1
    window: int = -1
    dict_pos: int = -1
    dict_size: int = 0
    fcs_pos: int = -1
    fcs_size: int = 0
    blocks: list[int] = field(default_factory=list)
    checksum: int = -1


def parse_frames(data: bytes) -> list[FrameInfo]:
    """Split a WELL-FORMED segment into frames by walking headers (no decompression)."""
    frames, pos = [], 0
    while pos < len(data):
        if data[pos] & 0xF0 == 0x50 and data[pos + 1 : pos + 4] == b"\x2a\x4d\x18":
            end = pos + 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            frames.append(FrameInfo(pos, end, True))
            pos = end
            continue
        if data[pos : pos + 4] != ZSTD_MAGIC:
            raise ValueError(f"not a frame at {pos}")
        fhd = data[pos + 4]
        single, checksum, dict_flag, fcs_flag = (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3, fhd >> 6
        info = FrameInfo(pos, -1, False, fhd=pos + 4)
        q = pos + 5
        if not single:
            info.window = q
            q += 1
        info.dict_pos, info.dict_size = q, (0, 1, 2, 4)[dict_flag]
        q += info.dict_size
        info.fcs_pos, info.fcs_size = q, (single, 2, 4, 8)[fcs_flag]
        q += info.fcs_size
        while True:
            bh = int.from_bytes(data[q : q + 3], "little")
            info.blocks.append(q)
            q += 3 + (1 if (bh >> 1) & 3 == 1 else bh >> 3)
            if bh & 1:
                break
        if checksum:
            info.checksum = q
            q += 4
        info.end = q
        frames.append(info)
        pos = q
    return frames


def hand_frame(content: bytes, rng: np.random.Generator, *, fcs_mode: str | None = None) -> bytes:
    """A valid zstd frame of raw and RLE blocks holding ``content``, built byte by byte.

    Args:
        content: The decompressed bytes.
        rng: Random source (block sizes, block types, header layout).
        fcs_mode: "single" (1-byte content size), "2", "4", "8" (content size of that many
            bytes) or "none" (a window descriptor and no content size); random if None.
    """
    size = len(content)
    if fcs_mode is None:
        choices = ["2", "4", "8", "none"] + (["single"] if size < 256 else [])
        fcs_mode = choices[int(rng.integers(len(choices)))]
    if fcs_mode == "2" and not 256 <= size < 65536 + 256:
        fcs_mode = "4"
    window = max(size, 1)  # single-segment frames: the window is the content size
    if fcs_mode == "single":
        header = bytes([0x20, size])
    elif fcs_mode == "2":
        header = bytes([0x60]) + (size - 256).to_bytes(2, "little")
    elif fcs_mode == "4":
        header = bytes([0xA0]) + size.to_bytes(4, "little")
    elif fcs_mode == "8":
        header = bytes([0xE0]) + size.to_bytes(8, "little")
    else:
        exponent = max(0, (window - 1).bit_length() - 10)
        window = 1 << (10 + exponent)
        header = bytes([0x00, exponent << 3])  # windowLog 10 + exponent, mantissa 0
    limit = min(pick(rng, [64, 1000, 1 << 17]), 1 << 17, window)
    out = bytearray(ZSTD_MAGIC + header)
    pos = 0
    while True:
        take_n = min(size - pos, int(rng.integers(1, limit + 1)))
        piece = content[pos : pos + take_n]
        pos += take_n
        last = pos >= size
        if piece and piece.count(piece[:1]) == len(piece) and rng.random() < 0.7:
            out += ((take_n << 3) | (1 << 1) | last).to_bytes(3, "little") + piece[:1]
        else:
            out += ((take_n << 3) | last).to_bytes(3, "little") + piece
        if last:
            return bytes(out)


_COMPRESSORS: dict[tuple[int, bool, bool], zstandard.ZstdCompressor] = {}


def compressor(level: int, checksum: bool = False, content_size: bool = True) -> zstandard.ZstdCompressor:
    """A cached ``ZstdCompressor``."""
    key = (level, checksum, content_size)
    if key not in _COMPRESSORS:
        _COMPRESSORS[key] = zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=content_size
        )
    return _COMPRESSORS[key]


def random_frame(content: bytes, rng: np.random.Generator) -> bytes:
    """Compress ``content`` into ONE valid zstd frame, with a random frame layout."""
    style = rng.random()
    level = pick(rng, [1, 1, 3, -5, 9])
    if style < 0.45:
        return compressor(level).compress(content)
    if style < 0.6:
        return compressor(level, checksum=True).compress(content)
    if style < 0.72:
        return compressor(level, checksum=bool(rng.integers(2)), content_size=False).compress(content)
    if style < 0.87:
        # Streaming: no content size; sometimes several blocks via block flushes.
        cobj = compressor(level, checksum=bool(rng.integers(2))).compressobj()
        cuts = sorted(int(c) for c in rng.integers(0, len(content) + 1, size=int(rng.integers(0, 4))))
        out, prev = bytearray(), 0
        for c in cuts:
            out += cobj.compress(content[prev:c]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            prev = c
        return bytes(out + cobj.compress(content[prev:]) + cobj.flush())
    return hand_frame(content, rng)


# ----------------------------------------------------------------------------------------
# Random records
# ----------------------------------------------------------------------------------------


def random_int64(rng: np.random.Generator, size: int, mode: str) -> np.ndarray:
    """``size`` int64 values: "small", "full" range, "extreme" values, or "mixed"."""
    if mode == "small":
        return rng.integers(-1000, 1000, size=size, dtype=np.int64)
    if mode == "full":
        return rng.integers(INT64_MIN, INT64_MAX, size=size, dtype=np.int64, endpoint=True)
    extremes = np.array(
        [0, 1, -1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1, 2**62, -(2**62), 127, 128, -64, -65],
        dtype=np.int64,
    )
    if mode == "extreme":
        return rng.choice(extremes, size=size)
    pick = rng.integers(0, 3, size=size)
    return np.where(
        pick == 0,
        rng.choice(extremes, size=size),
        np.where(
            pick == 1,
            rng.integers(-300, 300, size=size),
            rng.integers(INT64_MIN, INT64_MAX, size=size, dtype=np.int64, endpoint=True),
        ),
    )


def random_records(rng: np.random.Generator, *, bulk: bool = False) -> Records:
    """Random records of the known streams, with the awkward corners well represented."""
    roll = rng.random()
    if bulk:
        r = int(rng.integers(300, 1500))
    elif roll < 0.05:
        r = 0
    elif roll < 0.55:
        r = int(rng.integers(1, 9))
    elif roll < 0.92:
        r = int(rng.integers(9, 65))
    else:
        r = int(rng.integers(65, 400))
    stream_ids = rng.choice(np.array(KNOWN_IDS, dtype=np.uint32), size=r)
    if rng.random() < 0.3:
        stream_ids[:] = stream_ids[:1] if r else stream_ids
    n_mode = rng.random()
    if n_mode < 0.15:
        n = np.zeros(r, dtype=np.int64)
    elif n_mode < 0.9 or bulk:
        n = np.minimum(rng.geometric(0.25, size=r) - 1, 40).astype(np.int64)
        n[rng.random(r) < 0.2] = 0
    else:
        # A few records bigger than a small chunk among ordinary ones.
        n = np.minimum(rng.geometric(0.25, size=r) - 1, 40).astype(np.int64)
        big = rng.integers(0, r, size=int(rng.integers(1, 3))) if r else np.zeros(0, np.int64)
        n[big] = rng.integers(600, 3000, size=big.size)
    total = int(n.sum())
    offsets = np.zeros(r + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    index_mode = rng.random()
    if index_mode < 0.5:
        # Increasing indices, as a sparse vector's: per record, a cumsum of positive gaps.
        gaps = rng.geometric(0.3, size=total).astype(np.int64)
        start = np.repeat(rng.integers(0, 1 << pick(rng, [8, 32, 62]), size=r, dtype=np.int64), n)
        running = np.cumsum(gaps)
        firsts = np.repeat(running[offsets[:-1][n > 0]] - gaps[offsets[:-1][n > 0]], n[n > 0]) if total else running
        indices = start + (running - firsts) if total else np.zeros(0, np.int64)
    elif index_mode < 0.8:
        indices = random_int64(rng, total, "full")  # huge, negative, unordered: gaps wrap
    else:
        indices = random_int64(rng, total, "mixed")
    quantised = random_int64(rng, total, pick(rng, ["small", "full", "extreme", "mixed"]))
    tick_mode = rng.random()
    if tick_mode < 0.4:
        ticks = np.cumsum(rng.integers(0, 1000, size=r, dtype=np.int64)) + int(rng.integers(-(2**40), 2**40))
    elif tick_mode < 0.5:
        ticks = np.full(r, int(random_int64(rng, 1, "extreme")[0]), dtype=np.int64)
    else:
        ticks = random_int64(rng, r, pick(rng, ["full", "extreme", "mixed"]))
    return Records(
        stream_ids.astype(np.uint32),
        ticks.astype(np.int64),
        offsets,
        indices.astype(np.int64),
        quantised.astype(np.int64),
    )


def raw_records(rng: np.random.Generator, count: int, id_pool: tuple[int, ...]) -> list[bytes]:
    """Encoded records (one bytes object each) with stream ids drawn from ``id_pool``."""
    out = []
    for _ in range(count):
        sid = pick(rng, id_pool)
        n = int(rng.integers(0, 6))
        words = [sid, zigzag(int(rng.integers(-1000, 1000))), n]
        words += [int(x) & M64 for x in rng.integers(0, 1 << 40, size=n)]
        words += [zigzag(int(x)) for x in rng.integers(-(2**40), 2**40, size=n)]
        out.append(b"".join(leb128(w) for w in words))
    return out


# ----------------------------------------------------------------------------------------
# The pool of valid segments
# ----------------------------------------------------------------------------------------


@dataclass
class PoolSegment:
    """A valid segment with what it holds and where its frames are."""

    data: bytes
    records: Records
    frames: list[FrameInfo]
    contents: list[bytes]  # decompressed content of each frame (b"" for skippable frames)


def frame_contents(data: bytes, frames: list[FrameInfo], dctx: zstandard.ZstdDecompressor) -> list[bytes]:
    """Decompressed content of every frame of a well-formed segment."""
    out = []
    for f in frames:
        out.append(b"" if f.skippable else dctx.decompressobj().decompress(data[f.start : f.end]))
    return out


def reframe(contents: list[bytes], rng: np.random.Generator, *, extras: bool = True) -> bytes:
    """Compress frame contents again, each into one randomly laid out frame.

    Adjacent contents may be merged (frames hold whole records, so this stays valid); empty
    zstd frames and skippable frames may be inserted between frames when ``extras``.
    """
    merged: list[bytes] = []
    for c in contents:
        if merged and rng.random() < 0.2:
            merged[-1] += c
        else:
            merged.append(c)
    out = bytearray()
    for c in merged:
        if extras and rng.random() < 0.08:
            out += skippable_frame(rng.bytes(int(rng.integers(0, 20))), int(rng.integers(16)))
        if extras and rng.random() < 0.05:
            out += random_frame(b"", rng)
        out += random_frame(c, rng)
    return bytes(out)


def build_pool(seed: int, size: int, dctx: zstandard.ZstdDecompressor) -> list[PoolSegment]:
    """``size`` valid segments (non-empty), some large enough to span several 4 KiB chunks."""
    rng = np.random.default_rng([seed, 0x9001])
    pool: list[PoolSegment] = []
    while len(pool) < size:
        records = random_records(rng, bulk=rng.random() < 0.05)
        if not len(records):
            continue
        data = encode_segment(records, records_per_frame=int(rng.integers(1, 51)), level=pick(rng, [1, 3, -5]))
        if rng.random() < 0.4:
            data = reframe(frame_contents(data, parse_frames(data), dctx), rng)
        if rng.random() < 0.1:
            data = skippable_frame(rng.bytes(int(rng.integers(0, 12))), int(rng.integers(16))) + data
        frames = parse_frames(data)
        pool.append(PoolSegment(data, records, frames, frame_contents(data, frames, dctx)))
    return pool


# ----------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------


@dataclass
class Case:
    """One input for the decoder and what is known about the right answer."""

    index: int
    kind: str
    data: bytes
    chunk_bytes: int
    known: tuple[int, ...] = KNOWN_IDS
    selected: tuple[int, ...] | None = None
    expected: Records | None = None  # must decode to exactly this
    expect_error: tuple[type[SegmentError], int, int | None] | None = None  # required (error class, offset, stream id)
    read_size: int | None = None  # feed decode_stream short reads of this size
    note: str = ""


def pick_chunk(rng: np.random.Generator, forced: int | None) -> int:
    """The case's chunk_bytes: forced by --chunk-bytes, else mostly the default."""
    if forced is not None:
        return forced
    return pick(rng, SMALL_CHUNKS) if rng.random() < 0.25 else DEFAULT_CHUNK_BYTES


def gen_valid(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """A valid segment of random records, sometimes re-framed, selected or read in short reads."""
    records = random_records(rng, bulk=rng.random() < 0.02)
    rpf = int(rng.integers(1, 51))
    level = pick(rng, [1, 1, 3, -5])
    data = encode_segment(records, records_per_frame=rpf, level=level)
    notes = [f"records={len(records)} rpf={rpf} level={level}"]
    if data and rng.random() < 0.3:
        data = reframe(frame_contents(data, parse_frames(data), ctx.dctx), rng)
        notes.append("reframed")
    if rng.random() < 0.05:
        data = skippable_frame(rng.bytes(int(rng.integers(0, 30))), int(rng.integers(16))) + data
        notes.append("leading skippable")
    expected = records
    if rng.random() < 0.2:
        chosen = tuple(int(s) for s in KNOWN_IDS if rng.random() < 0.5)
        case.selected = chosen
        expected = take(records, np.isin(records.stream_ids.astype(np.uint64), np.array(chosen, dtype=np.uint64)))
        notes.append(f"selected={chosen}")
    if rng.random() < 0.1:
        case.read_size = pick(rng, [1, 3, 7, 100, 4099])
    case.data, case.expected, case.note = data, expected, " ".join(notes)


def mutate_bytes(data: bytes, rng: np.random.Generator, ctx: Context) -> tuple[bytes, list[str]]:
    """1..4 byte-level mutations."""
    out = bytearray(data)
    ops = []
    for _ in range(int(rng.integers(1, 5))):
        op = pick(rng, ["flip", "set", "setval", "truncate", "insert", "delete", "duplicate", "zero", "splice"])
        size = len(out)
        p = int(rng.integers(0, size + 1))
        k = int(rng.geometric(0.15))
        if op == "flip" and size:
            p = min(p, size - 1)
            out[p] ^= 1 << int(rng.integers(8))
        elif op == "set":
            out[p : p + k] = rng.bytes(k)
        elif op == "setval" and size:
            p = min(p, size - 1)
            out[p] = pick(rng, [0, 0xFF, 0x80, 0x7F, 0x01, 0x28, 0xFD, 0x50, 0x2A])
        elif op == "truncate":
            del out[p:]
        elif op == "insert":
            blob = [rng.bytes(k), ZSTD_MAGIC, b"\x80" * k, b"\x00" * k, skippable_frame(b"")]
            out[p:p] = blob[int(rng.integers(len(blob)))]
        elif op == "delete":
            del out[p : p + k]
        elif op == "duplicate":
            out[p:p] = out[p : p + 4 * k]
        elif op == "zero":
            out[p : p + k] = bytes(len(out[p : p + k]))
        elif op == "splice":
            other = ctx.pool[int(rng.integers(len(ctx.pool)))].data
            q = int(rng.integers(0, len(other) + 1))
            out = out[:p] + other[q:]
        ops.append(f"{op}@{p}/{k}")
    return bytes(out), ops


def frame_op(seg: PoolSegment, rng: np.random.Generator, ctx: Context) -> tuple[bytes, str]:
    """Drop, duplicate, swap or insert whole frames (the result often still decodes)."""
    spans = [(f.start, f.end) for f in seg.frames]
    pieces = [seg.data[s:e] for s, e in spans]
    op = pick(rng, ["drop", "duplicate", "swap", "insert", "empty", "reverse"])
    i = int(rng.integers(len(pieces)))
    if op == "drop":
        del pieces[i]
    elif op == "duplicate":
        pieces.insert(i, pieces[i])
    elif op == "swap":
        j = int(rng.integers(len(pieces)))
        pieces[i], pieces[j] = pieces[j], pieces[i]
    elif op == "insert":
        other = ctx.pool[int(rng.integers(len(ctx.pool)))]
        f = other.frames[int(rng.integers(len(other.frames)))]
        pieces.insert(i, other.data[f.start : f.end])
    elif op == "empty":
        empty = random_frame(b"", rng) if rng.random() < 0.5 else skippable_frame(rng.bytes(int(rng.integers(0, 9))))
        pieces.insert(i, empty)
    else:
        pieces.reverse()
    return b"".join(pieces), f"frame-{op}@{i}"


def gen_mutated(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """A pool segment with byte-level mutations, whole frames moved, or both."""
    seg = ctx.pool[int(rng.integers(len(ctx.pool)))]
    data, notes = seg.data, []
    if rng.random() < 0.3:
        data, note = frame_op(seg, rng, ctx)
        notes.append(note)
    if not notes or rng.random() < 0.6:
        data, ops = mutate_bytes(data, rng, ctx)
        notes += ops
    case.data, case.note = data, " ".join(notes)


def mutate_content(content: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Damage decompressed record bytes (the record splitter's input)."""
    out = bytearray(content)
    op = pick(rng, (
        "flip", "set", "truncate", "append", "insert", "delete",
        "long-varint", "huge-n", "unknown-id", "random", "terminate",
    ))  # fmt: skip
    p = int(rng.integers(0, len(out) + 1))
    if op == "flip" and out:
        out[min(p, len(out) - 1)] ^= 1 << int(rng.integers(8))
    elif op == "set":
        out[p : p + 1] = bytes([pick(rng, [0x00, 0x7F, 0x80, 0xFF, int(rng.integers(256))])])
    elif op == "truncate":
        del out[p:]
    elif op == "append":
        out += rng.bytes(int(rng.integers(1, 12)))
    elif op == "insert":
        out[p:p] = rng.bytes(int(rng.integers(1, 12)))
    elif op == "delete":
        del out[p : p + int(rng.integers(1, 12))]
    elif op == "long-varint":
        out[p:p] = b"\x80" * int(rng.integers(9, 14)) + bytes([int(rng.integers(0, 128))])
    elif op == "huge-n":
        # A record header whose n is huge (or exactly the maximum 64-bit value).
        n = pick(rng, (2**63, M64, 2**32, 10**6, 5))
        out[p:p] = leb128(pick(rng, KNOWN_IDS)) + b"\x00" + leb128(n)
    elif op == "unknown-id":
        out[:0] = raw_records(rng, 1, UNKNOWN_IDS)[0]
    elif op == "random":
        out = bytearray(bytes(int(b) % pick(rng, [2, 8, 128, 256]) for b in rng.bytes(int(rng.integers(0, 200)))))
    elif op == "terminate":
        out[p:p] = b"\x81\x81\x81"
    return bytes(out), op


def gen_payload(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """A pool segment whose decompressed record bytes are damaged, compressed again."""
    seg = ctx.pool[int(rng.integers(len(ctx.pool)))]
    contents = [c for c, f in zip(seg.contents, seg.frames, strict=True) if not f.skippable]
    notes = []
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(contents)))
        contents[i], op = mutate_content(contents[i], rng)
        notes.append(f"{op}@frame{i}")
    hand = rng.random() < 0.3
    data = b"".join(hand_frame(c, rng) if hand else random_frame(c, rng) for c in contents)
    case.data, case.note = data, " ".join(notes) + (" hand-built" if hand else "")


def gen_header(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """A pool segment with damaged frame headers: magic, descriptor, sizes, blocks, checksum."""
    seg = ctx.pool[int(rng.integers(len(ctx.pool)))]
    out = bytearray(seg.data)
    notes = []
    zframes = [f for f in seg.frames if not f.skippable] or seg.frames
    for _ in range(int(rng.integers(1, 3))):
        f = zframes[int(rng.integers(len(zframes)))]
        target = pick(rng, ["magic", "fhd", "window", "fcs", "block", "block", "checksum", "skippable-size"])
        if target == "skippable-size":
            sk = [g for g in seg.frames if g.skippable]
            if sk:
                g = sk[int(rng.integers(len(sk)))]
                new_size = pick(rng, [0, 1, 0xFFFFFFFF, int(rng.integers(0, 1 << 32))])
                out[g.start + 4 : g.start + 8] = new_size.to_bytes(4, "little")
                notes.append(f"skippable-size@{g.start}")
                continue
            target = "magic"
        if f.skippable:
            target = "magic"
        if target == "magic":
            p = f.start + int(rng.integers(4))
            choice = rng.random()
            if choice < 0.4:
                out[p] ^= 1 << int(rng.integers(8))
            elif choice < 0.7:
                out[p] = int(rng.integers(256))
            elif choice < 0.85:
                out[f.start : f.start + 4] = bytes([0x50 | int(rng.integers(16)), 0x2A, 0x4D, 0x18])  # now "skippable"
            else:
                out[f.start : f.start + 4] = bytes([int(rng.integers(0x22, 0x28)), 0xB5, 0x2F, 0xFD])  # legacy magic
        elif target == "fhd":
            if rng.random() < 0.6:
                out[f.fhd] ^= 1 << int(rng.integers(8))
            else:
                out[f.fhd] = int(rng.integers(256))
        elif target == "window" and f.window >= 0:
            out[f.window] = int(rng.integers(256))
        elif target == "fcs" and f.fcs_size:
            old = int.from_bytes(out[f.fcs_pos : f.fcs_pos + f.fcs_size], "little")
            top = (1 << (8 * f.fcs_size)) - 1
            new = pick(rng, (0, 1, top, old + 1, old - 1, int(rng.integers(0, 1 << 62)))) & top
            out[f.fcs_pos : f.fcs_pos + f.fcs_size] = new.to_bytes(f.fcs_size, "little")
        elif target == "checksum" and f.checksum >= 0:
            out[f.checksum + int(rng.integers(4))] ^= 1 << int(rng.integers(8))
        else:
            b = f.blocks[int(rng.integers(len(f.blocks)))]
            bh = int.from_bytes(out[b : b + 3], "little")
            how = pick(rng, ["last", "type", "size+-", "size-random", "size-huge", "byte"])
            if how == "last":
                bh ^= 1
            elif how == "type":
                bh = (bh & ~6) | (int(rng.integers(4)) << 1)
            elif how == "size+-":
                bh = (bh & 7) | ((max((bh >> 3) + pick(rng, [-3, -1, 1, 2, 100]), 0) & 0x1FFFFF) << 3)
            elif how == "size-random":
                bh = (bh & 7) | (int(rng.integers(0, 1 << 21)) << 3)
            elif how == "size-huge":
                bh = (bh & 7) | (pick(rng, [(1 << 17) + 1, (1 << 21) - 1]) << 3)
            else:
                bh ^= int(rng.integers(1, 256)) << (8 * int(rng.integers(3)))
            out[b : b + 3] = (bh & 0xFFFFFF).to_bytes(3, "little")
            target = f"block-{how}"
        notes.append(f"{target}@{f.start}")
    case.data, case.note = bytes(out), " ".join(notes)


def random_blob(rng: np.random.Generator) -> bytes:
    """Random bytes: uniform, biased towards small and continuation bytes, or one byte repeated."""
    roll = rng.random()
    if roll < 0.2:
        length = int(rng.integers(0, 17))
    elif roll < 0.85:
        length = int(rng.integers(0, 601))
    else:
        length = int(rng.integers(0, 5001))
    style = rng.random()
    if style < 0.6:
        return rng.bytes(length)
    if style < 0.8:
        low = rng.integers(0, 8, size=length, dtype=np.uint8)
        return (low | np.where(rng.random(length) < 0.3, 0x80, 0).astype(np.uint8)).tobytes()
    return bytes([int(rng.integers(256))]) * length


def gen_random(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """Purely random bytes."""
    case.data = random_blob(rng)


def gen_magic_random(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """Random bytes after the zstd magic or a plausible frame header, or hand-built frames."""
    roll = rng.random()
    if roll < 0.4:
        case.data, case.note = ZSTD_MAGIC + random_blob(rng), "magic+random"
    elif roll < 0.7:
        if rng.random() < 0.5:
            fhd = int(rng.integers(256))
        else:
            fhd = pick(rng, [0x20, 0x60, 0xA0, 0xE0, 0x00, 0x24, 0x04])
        header = ZSTD_MAGIC + bytes([fhd]) + rng.bytes(int(rng.integers(0, 10)))

        def random_block() -> bytes:
            """A random block header (size, type, last flag) and a random body of another size."""
            size, block_type, last = int(rng.integers(0, 300)), int(rng.integers(4)), int(rng.random() < 0.5)
            return ((size << 3) | (block_type << 1) | last).to_bytes(3, "little") + rng.bytes(int(rng.integers(0, 300)))

        blocks = b"".join(random_block() for _ in range(int(rng.integers(1, 4))))
        case.data, case.note = header + blocks, "magic+header+random blocks"
    else:
        frames = []
        for _ in range(int(rng.integers(1, 4))):
            content = random_blob(rng)
            if rng.random() < 0.5:
                records = b"".join(raw_records(rng, int(rng.integers(0, 5)), KNOWN_IDS))
                content = records + content[: int(rng.integers(0, 8))]
            frames.append(hand_frame(content, rng))
        case.data, case.note = b"".join(frames), "hand-built raw/RLE frames"
    if rng.random() < 0.2:
        case.known = ()
        case.note += " no streams declared"


def gen_skippable(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """Skippable frames of exact, short, long, huge or cut sizes, around a pool segment."""
    parts, notes = [], []
    seg = ctx.pool[int(rng.integers(len(ctx.pool)))]
    where = pick(rng, ["before", "after", "between", "alone"])
    for _ in range(int(rng.integers(1, 4))):
        payload = rng.bytes(pick(rng, [0, 1, 7, int(rng.integers(0, 300))]))
        size_mode = pick(rng, ["exact", "exact", "exact", "short", "long", "huge", "random", "cut-header"])
        size = {
            "exact": len(payload),
            "short": max(len(payload) - int(rng.integers(1, 10)), 0),
            "long": len(payload) + int(rng.integers(1, 10)),
            "huge": 0xFFFFFFFF,
            "random": int(rng.integers(0, 1 << 32)),
        }.get(size_mode)
        frame = skippable_frame(payload, int(rng.integers(16)), size)
        if size_mode == "cut-header":
            frame = frame[: int(rng.integers(1, 8))]
        parts.append(frame)
        notes.append(size_mode)
    skip = b"".join(parts)
    if where == "before":
        data = skip + seg.data
    elif where == "after":
        data = seg.data + skip
    elif where == "between" and len(seg.frames) > 1:
        cut = seg.frames[int(rng.integers(1, len(seg.frames)))].start
        data = seg.data[:cut] + skip + seg.data[cut:]
    else:
        data = skip
    case.data, case.note = data, f"{where} " + " ".join(notes)


def gen_unknown(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """Records of undeclared stream ids among known ones: the first must be named."""
    if rng.random() < 0.15:
        # A run that declares no streams at all: the first record is unknown.
        seg = ctx.pool[int(rng.integers(len(ctx.pool)))]
        case.known = ()
        first_frame = next(f for f, c in zip(seg.frames, seg.contents, strict=True) if c)
        first_sid = seg.records.stream_ids[0]
        case.data, case.note = seg.data, "no streams declared"
        case.expect_error = (UnknownStreamError, first_frame.start, int(first_sid))
        return
    count = int(rng.integers(1, 40))
    records = raw_records(rng, count, KNOWN_IDS)
    bad = int(rng.integers(count))
    sid = pick(rng, UNKNOWN_IDS)
    records[bad] = raw_records(rng, 1, (sid,))[0]
    if rng.random() < 0.3:  # more unknown ids later: the first one must be named
        later = int(rng.integers(bad, count))
        records[later] = raw_records(rng, 1, UNKNOWN_IDS)[0] if later != bad else records[later]
    rpf = int(rng.integers(1, 51)) if rng.random() < 0.7 else count
    out, frame_start = bytearray(), None
    for lo in range(0, count, rpf):
        if rng.random() < 0.1:
            out += skippable_frame(rng.bytes(3))
        if lo <= bad < lo + rpf:
            frame_start = len(out)
        out += random_frame(b"".join(records[lo : lo + rpf]), rng)
    if rng.random() < 0.3:
        case.selected = tuple(int(s) for s in KNOWN_IDS if rng.random() < 0.5)  # unselected ids are validated too
    assert frame_start is not None  # the frames cover every record, the bad one too
    case.data, case.note = bytes(out), f"records={count} bad={bad} rpf={rpf}"
    case.expect_error = (UnknownStreamError, frame_start, sid)


def block_frame(parts: list[tuple[bytes, int]], with_fcs: bool) -> bytes:
    """A valid zstd frame from ``(bytes, repeat)`` parts.

    A part with ``repeat == 0`` becomes raw blocks, any other RLE blocks (of its single byte,
    ``repeat`` times); all blocks hold at most 128 KiB.
    """
    blocks: list[tuple[int, int, bytes]] = []  # (type, regenerated size, payload)
    size = 0
    for blob, repeat in parts:
        if repeat:
            for lo in range(0, repeat, 1 << 17):
                n = min(1 << 17, repeat - lo)
                blocks.append((1, n, blob[:1]))
            size += repeat
        else:
            for lo in range(0, len(blob), 1 << 17):
                piece = blob[lo : lo + (1 << 17)]
                blocks.append((0, len(piece), piece))
            size += len(blob)
    if not blocks:
        blocks.append((0, 0, b""))
    # Single segment with an 8-byte content size (the window is the content size, so at
    # least one block), or no content size and a 128 KiB window (windowLog 17).
    header = bytes([0xE0]) + size.to_bytes(8, "little") if with_fcs and size >= (1 << 17) else bytes([0x00, 7 << 3])
    out = bytearray(ZSTD_MAGIC + header)
    for i, (btype, n, payload) in enumerate(blocks):
        out += ((n << 3) | (btype << 1) | (i == len(blocks) - 1)).to_bytes(3, "little") + payload
    return bytes(out)


def gen_bomb(rng: np.random.Generator, ctx: Context, case: Case) -> None:
    """A few hundred bytes that decompress to 64 KiB .. 4 MiB.

    They hold one huge valid record, a record declaring more elements than the frame holds,
    or very many empty records. The answer is known in closed form, so no reference decoding of megabytes is needed.
    A correct decoder handles these in linear time and with memory bounded by chunk_bytes.
    """
    size = int(2 ** rng.uniform(16, 22))
    prefix = ctx.pool[int(rng.integers(len(ctx.pool)))] if rng.random() < 0.3 else None
    before = prefix.records if prefix is not None else Records.from_lists([], [], [], [])
    start = len(prefix.data) if prefix is not None else 0
    with_fcs = bool(rng.random() < 0.5)

    def last_tick(sid: int) -> int:
        hits = np.flatnonzero(before.stream_ids == sid)
        return int(before.ticks[hits[-1]]) if hits.size else 0

    variant = pick(rng, ["big-record", "cut-record", "empty-records"])
    if variant == "big-record":
        n = max(size // 2, 1)
        sid, delta = pick(rng, KNOWN_IDS), int(rng.integers(-(2**40), 2**40))
        first = int(rng.integers(0, 2**63, dtype=np.int64)) * pick(rng, [1, 2])
        gap, qbyte = int(rng.integers(0, 128)), int(rng.integers(0, 128))
        head = leb128(sid) + leb128(zigzag(delta)) + leb128(n) + leb128(first & M64)
        frame = block_frame([(head, 0), (bytes([gap]), n - 1), (bytes([qbyte]), n)], with_fcs)
        steps = np.arange(n, dtype=np.uint64) * np.uint64(gap + 1)
        big = Records(
            np.array([sid], dtype=np.uint32),
            np.array([i64(last_tick(sid) + delta)], dtype=np.int64),
            np.array([0, n], dtype=np.int64),
            (steps + np.uint64(first & M64)).view(np.int64),
            np.full(n, unzigzag(qbyte), dtype=np.int64),
        )
        case.expected = Records.concat([before, big])
    elif variant == "cut-record":
        n = pick(rng, (size, 2**40, M64))  # always more elements than the frame holds
        head = leb128(pick(rng, KNOWN_IDS)) + b"\x00" + leb128(n)
        frame = block_frame([(head, 0), (bytes([int(rng.integers(0, 128))]), size)], with_fcs)
        case.expect_error = (SegmentError, start, None)
    else:
        count = max(size // 3, 1)
        frame = block_frame([(b"\x00", 3 * count)], with_fcs)  # sid 0, delta 0, n 0, again and again
        tick = last_tick(0)
        empty = Records(
            np.zeros(count, np.uint32),
            np.full(count, tick, np.int64),
            np.zeros(count + 1, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
        case.expected = Records.concat([before, empty])
    case.data = (prefix.data if prefix is not None else b"") + frame
    case.note = (
        f"{variant} {size} bytes decompressed"
        f"{' with content size' if with_fcs else ''}{' after a pool segment' if prefix else ''}"
    )


GENERATORS: dict[str, Callable[[np.random.Generator, Context, Case], None]] = {
    "bomb": gen_bomb,
    "valid": gen_valid,
    "mutated": gen_mutated,
    "payload": gen_payload,
    "header": gen_header,
    "random": gen_random,
    "magic-random": gen_magic_random,
    "skippable": gen_skippable,
    "unknown-stream": gen_unknown,
}


def kind_of(index: int) -> str:
    """The kind of case ``index``: the rotation, except that every 1000th case is a bomb."""
    return "bomb" if index % BOMB_EVERY == BOMB_EVERY - 1 else ROTATION[index % len(ROTATION)]


def make_case(index: int, seed: int, ctx: Context) -> Case:
    """Case ``index`` of the run seeded with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    kind = kind_of(index)
    case = Case(index, kind, b"", pick_chunk(rng, ctx.chunk_bytes))
    GENERATORS[kind](rng, ctx, case)
    if case.read_size is None and kind != "valid" and rng.random() < 0.03:
        case.read_size = pick(rng, [1, 5, 4099])
    return case


# ----------------------------------------------------------------------------------------
# The reference decoder (slow, simple, independent of herocollector.decode.codec)
# ----------------------------------------------------------------------------------------


@dataclass
class Reference:
    """What the reference decoder made of a segment."""

    records: Records | None  # None when it failed
    fail_pos: int = -1  # offset of the frame (or first non-frame byte) with the first damage
    reason: str = ""
    unknown_sid: int | None = None


_LONG_VARINT = re.compile(rb"([\x80-\xff]++[\x00-\x7f]|[\x80-\xff]+\Z)")
"""A varint of two bytes or more (captured, so ``split`` keeps it), or the unfinished one at the
end. That second branch keeps the scan linear: without it, a long run of continuation bytes
that no last byte ends would be tried again from each of its bytes."""


_varints: dict[bytes, int] = {}
"""The values of the multi-byte varints decoded so far (only complete ones of at most 10 bytes)."""
_VARINT_MEMO = 1 << 16
"""Most varints remembered: tick deltas and quantised values repeat, so most words are seen again."""


def reference_decode(
    data: bytes, known: tuple[int, ...], selected: tuple[int, ...] | None, dctx: zstandard.ZstdDecompressor
) -> Reference:
    """Decode a segment frame by frame with ``zstandard``, then its records by hand.

    Each record's epoch tick is the delta added to the previous tick of the same stream
    (starting from 0), as the data logger writes it.
    """
    known_set = set(known)
    chosen = known_set if selected is None else known_set & set(selected)
    last: dict[int, int] = {}
    sids: list[int] = []
    ticks: list[int] = []
    offsets = [0]
    idx: list[int] = []
    qs: list[int] = []
    view = memoryview(data)
    size, pos = len(data), 0
    while pos < size:
        if size - pos >= 4 and data[pos] & 0xF0 == 0x50 and data[pos + 1 : pos + 4] == b"\x2a\x4d\x18":
            if size - pos < 8:
                return Reference(None, pos, "truncated skippable frame header")
            end = pos + 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            if end > size:
                return Reference(None, pos, "truncated skippable frame")
            pos = end
            continue
        if data[pos : pos + 4] != ZSTD_MAGIC:
            return Reference(None, pos, "not a frame")
        obj = dctx.decompressobj()
        try:
            content = obj.decompress(view[pos:])
        except zstandard.ZstdError as exc:
            return Reference(None, pos, f"zstd: {exc}")
        if not obj.eof:
            return Reference(None, pos, "truncated zstd frame")
        end = size - len(obj.unused_data)
        # Varints: runs of one-byte varints are their bytes; ``re`` finds the longer ones.
        vals: list[int] = []
        parts = _LONG_VARINT.split(content)
        for k in range(1, len(parts), 2):
            vals.extend(parts[k - 1])
            word = parts[k]
            v = _varints.get(word)
            if v is None:
                if word[-1] >= 0x80:  # the frame's end cuts it (before checking its length, as ever)
                    return Reference(None, pos, "unfinished varint")
                if len(word) > 10:
                    return Reference(None, pos, "varint longer than 10 bytes")
                v = 0
                for byte in reversed(word):
                    v = (v << 7) | (byte & 0x7F)
                v &= M64
                if len(_varints) < _VARINT_MEMO:
                    _varints[word] = v
            vals.append(v)
        vals.extend(parts[-1])  # one-byte varints only
        # Records.
        r, count = 0, len(vals)
        while r < count:
            if r + 2 >= count:
                return Reference(None, pos, "record cut short (header)")
            n = vals[r + 2]
            if r + 3 + 2 * n > count:
                return Reference(None, pos, "record cut short (body)")
            sid = vals[r]
            if sid not in known_set:
                return Reference(None, pos, "unknown stream id", unknown_sid=sid)
            tick = i64(last.get(sid, 0) + unzigzag(vals[r + 1]))
            last[sid] = tick
            if sid in chosen:
                sids.append(sid)
                ticks.append(tick)
                offsets.append(offsets[-1] + n)
                if n:
                    # Kept as uint64 words here and converted once at the end (fewer calls per element).
                    gaps = vals[r + 4 : r + 3 + n]
                    idx.extend(accumulate(gaps, lambda at, gap: (at + gap + 1) & M64, initial=vals[r + 3]))
                    qs.extend(vals[r + 3 + n : r + 3 + 2 * n])
            r += 3 + 2 * n
        pos = end
    signed_idx = [v - (1 << 64) if v >> 63 else v for v in idx]  # i64() of each
    signed_qs = [(v >> 1) ^ -(v & 1) for v in qs]  # unzigzag() of each
    return Reference(records_from_python(sids, ticks, offsets, signed_idx, signed_qs))


# ----------------------------------------------------------------------------------------
# Running cases
# ----------------------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the watchdog signal inside a decode that takes too long."""


class _ShortReader(io.RawIOBase):
    """A binary file object whose reads return at most ``step`` bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@dataclass
class Context:
    """What every case of a run shares."""

    pool: list[PoolSegment]
    dctx: zstandard.ZstdDecompressor
    chunk_bytes: int | None
    decoder_factory: Callable[..., SegmentDecoder]
    timeout: float
    use_alarm: bool
    reference: bool
    oracle: Callable[..., NumpySegmentDecoder] | None = NumpySegmentDecoder


@dataclass
class Result:
    """The outcome of one case."""

    outcome: str  # one of OK_OUTCOMES or FAILURE_KINDS
    seconds: float
    reason: str = ""


def decode_case(case: Case, ctx: Context) -> Records:
    """Decode a case's bytes with the decoder under test (in one call, or in short reads)."""
    decoder = ctx.decoder_factory(case.known, case.selected, chunk_bytes=case.chunk_bytes)
    if case.read_size is None:
        return decoder.decode_bytes(case.data, SEGMENT_NAME)
    return Records.concat(decoder.decode_stream(_ShortReader(case.data, case.read_size), SEGMENT_NAME))


def run_case(case: Case, ctx: Context) -> Result:
    """Decode one case under the watchdog and classify the outcome."""
    got: Records | None = None
    error: CollectorError | None = None
    start = time.perf_counter()
    try:
        if ctx.use_alarm:
            signal.setitimer(signal.ITIMER_REAL, ctx.timeout)
        try:
            got = decode_case(case, ctx)
        finally:
            if ctx.use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _Hang:
        return Result("hang", time.perf_counter() - start, f"decode still running after {ctx.timeout} s")
    except Exception as exc:  # noqa: BLE001 - classifying every exception is the point
        if not isinstance(exc, CollectorError):
            return Result("wrong-exception", time.perf_counter() - start, "".join(traceback.format_exception(exc)))
        error = exc
    seconds = time.perf_counter() - start
    if seconds > ctx.timeout:
        return Result("hang", seconds, f"decode took {seconds:.2f} s (watchdog limit {ctx.timeout} s)")
    return classify(case, ctx, got, error, seconds)


def classify(case: Case, ctx: Context, got: Records | None, error: CollectorError | None, seconds: float) -> Result:
    """Check one decode against what is required and against the oracles."""
    size = len(case.data)
    if error is not None:
        if error.path != SEGMENT_NAME:
            return Result("wrong-exception", seconds, f"error names {error.path!r}, not the segment: {error!r}")
        if isinstance(error, SegmentError) and not 0 <= error.offset <= size:
            return Result("bad-offset", seconds, f"offset {error.offset} outside 0..{size}: {error}")
        if isinstance(error, UnknownStreamError):
            outcome = "unknown-stream-error"
        elif isinstance(error, SegmentError):
            outcome = "segment-error"
        else:
            outcome = "other-collector-error"
    else:
        assert got is not None  # no error: the decode returned
        problem = columns_problem(got)
        if problem:
            return Result("bad-columns", seconds, problem)
        outcome = "ok-exact" if case.expected is not None else "ok-decoded-mutant"

    if case.expected is not None:
        if error is not None:
            return Result("not-round-tripping", seconds, f"valid segment raised {error!r}")
        assert got is not None  # no error: the decode returned
        if not got.equals(case.expected):
            return Result("not-round-tripping", seconds, "decoded records differ from the encoded ones")

    if case.expect_error is not None:
        cls, offset, sid = case.expect_error
        wanted = f"{cls.__name__}(offset {offset}" + (f", stream {sid})" if sid is not None else ")")
        if type(error) is not cls:
            records = f" / {len(got)} records" if got is not None else ""
            return Result("wrong-error", seconds, f"expected {wanted}, got {error!r}{records}")
        assert isinstance(error, SegmentError)  # of class ``cls``, a SegmentError class
        stream_id = error.stream_id if isinstance(error, UnknownStreamError) else None
        if error.offset != offset or (sid is not None and stream_id != sid):
            return Result("wrong-error", seconds, f"expected {wanted}, got {error!r}")

    if ctx.oracle is not None:
        try:
            oracle = ctx.oracle(case.known, case.selected, chunk_bytes=case.chunk_bytes)
            theirs: Records | None = oracle.decode_bytes(case.data, SEGMENT_NAME)
        except CollectorError:
            theirs = None
        except Exception:  # noqa: BLE001
            return Result("harness-error", seconds, "NumPy oracle crashed:\n" + traceback.format_exc())
        if (theirs is None) != (error is not None):
            ours = repr(error) if error is not None else "succeeds"
            reason = f"NumPy decoder {'fails' if theirs is None else 'succeeds'}, decoder: {ours}"
            return Result("oracle-mismatch", seconds, reason)
        if theirs is not None:
            assert got is not None  # both decoders succeeded
            if not got.equals(theirs):
                reason = f"decoder and NumPy decoder records differ ({len(got)} vs {len(theirs)} records)"
                return Result("oracle-mismatch", seconds, reason)

    if not ctx.reference or case.kind == "bomb":  # bombs: megabytes; their answer is known in closed form
        return Result(outcome, seconds)
    try:
        ref = reference_decode(case.data, case.known, case.selected, ctx.dctx)
    except Exception:  # noqa: BLE001
        return Result("harness-error", seconds, "reference decoder crashed:\n" + traceback.format_exc())
    if case.expected is not None and (ref.records is None or not ref.records.equals(case.expected)):
        # Keep the reference decoder honest: on valid segments it must agree with the encoder.
        reason = f"reference decoder disagrees with the encoder: {ref.reason} at {ref.fail_pos}"
        return Result("harness-error", seconds, reason)
    damage = f"{ref.reason} at {ref.fail_pos}"
    if ref.records is not None:
        if error is not None:
            reason = f"reference decodes {len(ref.records)} records, decoder raised {error!r}"
            return Result("reference-mismatch", seconds, reason)
        assert got is not None  # no error: the decode returned
        if not got.equals(ref.records):
            reason = f"decoder and reference records differ ({len(got)} vs {len(ref.records)} records)"
            return Result("reference-mismatch", seconds, reason)
        return Result(outcome, seconds)
    if error is None:
        assert got is not None  # no error: the decode returned
        return Result("reference-mismatch", seconds, f"decoder returned {len(got)} records; reference: {damage}")
    if not isinstance(error, SegmentError):
        return Result("reference-mismatch", seconds, f"reference: {damage}; decoder raised {error!r}")
    if error.offset != ref.fail_pos:
        where = "before" if error.offset < ref.fail_pos else "after"
        reason = f"error at {error.offset}, {where} the first damage ({damage}): {error}"
        return Result("misplaced-offset", seconds, reason)
    if isinstance(error, UnknownStreamError) != (ref.unknown_sid is not None):
        return Result("reference-mismatch", seconds, f"reference: {damage}; decoder raised {error!r}")
    if isinstance(error, UnknownStreamError) and error.stream_id != ref.unknown_sid:
        reason = f"names stream {error.stream_id}, reference finds {ref.unknown_sid} first"
        return Result("wrong-error", seconds, reason)
    return Result(outcome, seconds)


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """Figures of a fuzz run."""

    seed: int
    start: int
    requested_cases: int
    cases: int = 0
    seconds: float = 0.0
    pool_seconds: float = 0.0
    warm_up_seconds: float = 0.0
    kernel_backend: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    bytes_fed: int = 0
    slowest: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    chunk_bytes: int | None = None

    @property
    def cases_per_second(self) -> float:
        """Cases run per second of run time (0 before any time has passed)."""
        return self.cases / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        """The figures, and the environment they were measured in, as a JSON-ready dict."""
        return {
            "seed": self.seed,
            "start": self.start,
            "requested_cases": self.requested_cases,
            "cases": self.cases,
            "chunk_bytes": self.chunk_bytes,
            "seconds": round(self.seconds, 3),
            "pool_seconds": round(self.pool_seconds, 3),
            "warm_up_seconds": round(self.warm_up_seconds, 3),
            "kernel_backend": self.kernel_backend,
            "numba_boundscheck": os.environ.get("NUMBA_BOUNDSCHECK", ""),
            "cases_per_second": round(self.cases_per_second, 1),
            "bytes_fed": self.bytes_fed,
            "outcomes": {k: self.counts.get(k, 0) for k in OK_OUTCOMES + FAILURE_KINDS},
            "by_kind": {k: dict(v) for k, v in self.by_kind.items()},
            "slowest": self.slowest,
            "failures": self.failures,
            "environment": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "zstandard": zstandard.__version__,
                "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
                "machine": platform.machine(),
            },
        }


def write_failure(directory: Path, case: Case, result: Result, seed: int, replay_options: str = "") -> dict[str, Any]:
    """Write a failing input (``.bin``) and its description (``.json``); return the description."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"seed{seed}-case{case.index}-{case.kind}-{result.outcome}"
    (directory / f"{stem}.bin").write_bytes(case.data)
    info = {
        "case": case.index,
        "seed": seed,
        "kind": case.kind,
        "failure": result.outcome,
        "reason": result.reason,
        "note": case.note,
        "chunk_bytes": case.chunk_bytes,
        "known": list(case.known),
        "selected": None if case.selected is None else list(case.selected),
        "read_size": case.read_size,
        "bytes": len(case.data),
        "hex": case.data.hex() if len(case.data) <= 4096 else case.data[:4096].hex() + "...",
        "file": str(directory / f"{stem}.bin"),
        "replay": f"python benchmarks/fuzz_decoder.py --seed {seed} --start {case.index} --cases 1{replay_options}",
    }
    (directory / f"{stem}.json").write_text(json.dumps(info, indent=2))
    return info


class _HardWatchdog:
    """A thread that ends the process when one case runs far past the watchdog limit.

    The per-case SIGALRM can only interrupt Python code; if a decode is stuck inside C code
    that never returns, this writes the reproducer and exits with status 3.
    """

    def __init__(self, limit: float, directory: Path, seed: int, replay_options: str) -> None:
        self.limit, self.directory, self.seed, self.replay_options = limit, directory, seed, replay_options
        self.case: Case | None = None
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-hard-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            case = self.case
            if case is not None and time.monotonic() - self.started > self.limit:
                result = Result("hang", self.limit, "uninterruptible hang (hard watchdog)")
                info = write_failure(self.directory, case, result, self.seed, self.replay_options)
                sys.stderr.write(f"\nHARD HANG in case {case.index} ({case.kind}); reproducer: {info['file']}\n")
                sys.stderr.flush()
                os._exit(3)

    def stop(self) -> None:
        self._stop.set()


def run_fuzz(
    cases: int = 100_000,
    seed: int = 0,
    *,
    start: int = 0,
    seconds: float | None = None,
    chunk_bytes: int | None = None,
    failures_dir: str | Path | None = DEFAULT_FAILURES_DIR,
    timeout: float = 5.0,
    pool_size: int = 300,
    reference: bool = True,
    oracle: bool = True,
    progress: Callable[[FuzzReport], None] | None = None,
    decoder_factory: Callable[..., SegmentDecoder] = SegmentDecoder,
    max_failures_written: int = 200,
    workers: int = 1,
    nice: int = 0,
) -> FuzzReport:
    """Run ``cases`` fuzz cases (indices ``start..start+cases-1``) and return the figures.

    Args:
        cases: Number of cases.
        seed: Seed of the run; case ``i`` uses ``default_rng([seed, i])``.
        start: Index of the first case (to replay one case: ``start=i, cases=1``).
        seconds: Optional time budget; the run stops early when it is used up.
        chunk_bytes: Use this chunk size for every case (default: mostly 1 MiB, sometimes small).
        failures_dir: Where failing inputs are written (None: nowhere).
        timeout: Per-case watchdog, in seconds; a slower decode is a "hang" failure.
        pool_size: Valid segments precomputed for the mutation kinds.
        reference: Compare every case (but bombs) with the pure-Python reference decoder.
        oracle: Compare every case with the NumPy decoder.
        progress: Called about every 10 s with the report so far.
        decoder_factory: The decoder class (tests inject faulty ones to check the harness).
        max_failures_written: Cap on failure files written.
        workers: Processes to run the cases in: each runs a contiguous share of the indices
            (so every case is exactly the case it is alone) with its own pool, kernels and
            watchdog, and the reports are merged. ``progress`` is not called then.
        nice: With ``workers > 1``, raise the worker processes' niceness by this much, so
            that they take the CPU only when latency-sensitive work (the end-to-end tests
            running beside them in a test suite) does not need it. This process is left as it is.

    Returns:
        The report; ``report.failures`` is empty when the decoder behaved.

    The per-case watchdog is SIGALRM, so it interrupts a slow decode only when this runs in
    the main thread; elsewhere a slow case is still reported as a hang, once it returns.
    """
    if workers > 1 and cases > 1:
        options = {
            "seconds": seconds,
            "chunk_bytes": chunk_bytes,
            "failures_dir": failures_dir,
            "timeout": timeout,
            "pool_size": pool_size,
            "reference": reference,
            "oracle": oracle,
            "decoder_factory": decoder_factory,
            "max_failures_written": max_failures_written,
        }
        return _run_in_processes(min(workers, cases), cases, seed, start, options, nice)
    dctx = zstandard.ZstdDecompressor()
    report = FuzzReport(seed, start, cases, chunk_bytes=chunk_bytes)
    t0 = time.perf_counter()
    pool = build_pool(seed, pool_size, dctx)
    report.pool_seconds = time.perf_counter() - t0
    # Load the kernels (or compile them: with NUMBA_BOUNDSCHECK=1 that takes seconds) before
    # any case runs under the watchdog.
    t0 = time.perf_counter()
    report.kernel_backend = native.warm_up()
    report.warm_up_seconds = time.perf_counter() - t0
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    numpy_oracle = NumpySegmentDecoder if oracle else None
    ctx = Context(pool, dctx, chunk_bytes, decoder_factory, timeout, use_alarm, reference, numpy_oracle)
    directory = Path(failures_dir) if failures_dir is not None else None
    # The pool and --chunk-bytes change what case i is: a replay needs them too.
    replay_options = (f" --chunk-bytes {chunk_bytes}" if chunk_bytes is not None else "") + (
        f" --pool {pool_size}" if pool_size != 300 else ""
    )
    hard = _HardWatchdog(max(4 * timeout, timeout + 30), directory or Path(DEFAULT_FAILURES_DIR), seed, replay_options)
    previous = None
    if use_alarm:

        def on_alarm(signum: int, frame: Any) -> None:
            raise _Hang()

        previous = signal.signal(signal.SIGALRM, on_alarm)
    t1 = time.perf_counter()
    last_progress = t1
    try:
        for index in range(start, start + cases):
            if seconds is not None and time.perf_counter() - t1 >= seconds:
                break
            try:
                case = make_case(index, seed, ctx)
            except Exception:  # noqa: BLE001
                case = Case(index, kind_of(index), b"", 0)
                result = Result("harness-error", 0.0, "case generator crashed:\n" + traceback.format_exc())
            else:
                hard.case, hard.started = case, time.monotonic()
                result = run_case(case, ctx)
                hard.case = None
            report.cases += 1
            report.bytes_fed += len(case.data)
            report.counts[result.outcome] += 1
            report.by_kind.setdefault(case.kind, Counter())[result.outcome] += 1
            if result.seconds > report.slowest.get("seconds", -1.0):
                report.slowest = {
                    "seconds": round(result.seconds, 6),
                    "case": index,
                    "kind": case.kind,
                    "bytes": len(case.data),
                    "chunk_bytes": case.chunk_bytes,
                    "note": case.note,
                }
            if result.outcome in FAILURE_KINDS:
                info: dict[str, Any] = {
                    "case": index,
                    "kind": case.kind,
                    "failure": result.outcome,
                    "reason": result.reason,
                    "note": case.note,
                    "bytes": len(case.data),
                }
                if directory is not None and len(report.failures) < max_failures_written:
                    info = write_failure(directory, case, result, seed, replay_options)
                else:
                    info["hex"] = case.data[:512].hex()
                report.failures.append(info)
            now = time.perf_counter()
            if progress is not None and now - last_progress >= 10:
                report.seconds = now - t1
                progress(report)
                last_progress = now
    finally:
        hard.stop()
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    report.seconds = time.perf_counter() - t1
    return report


def _run_in_processes(
    workers: int, cases: int, seed: int, start: int, options: dict[str, Any], nice: int = 0
) -> FuzzReport:
    """:func:`run_fuzz` over ``workers`` processes, one contiguous share of the cases each, merged."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bounds = [start + cases * k // workers for k in range(workers + 1)]
    shares = [(lo, hi) for lo, hi in pairwise(bounds) if hi > lo]
    report = FuzzReport(seed, start, cases, chunk_bytes=options["chunk_bytes"])
    t0 = time.perf_counter()
    # Fresh interpreters (a forked child would inherit this process's threads' locks), one
    # executor each: a worker that the hard watchdog ends takes no other share with it.
    spawn = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        executors = [
            stack.enter_context(ProcessPoolExecutor(1, mp_context=spawn, initializer=os.nice, initargs=(nice,)))
            for _ in shares
        ]
        pairs = zip(executors, shares, strict=True)
        futures = [ex.submit(run_fuzz, hi - lo, seed, start=lo, **options) for ex, (lo, hi) in pairs]
        for (lo, hi), future in zip(shares, futures, strict=True):
            try:
                part = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (the hard watchdog exits) is a failure
                reason = f"the worker of cases {lo}..{hi - 1} died ({type(exc).__name__}: {exc}); see its reproducer"
                report.counts["hang"] += 1
                report.failures.append({"case": lo, "kind": "worker", "failure": "hang", "reason": reason, "bytes": 0})
                continue
            _merge_into(report, part)
    report.failures.sort(key=lambda f: int(f["case"]))
    report.seconds = time.perf_counter() - t0
    return report


def _merge_into(report: FuzzReport, part: FuzzReport) -> None:
    """Add the figures of one worker's share to ``report``."""
    report.cases += part.cases
    report.counts.update(part.counts)
    for kind, counts in part.by_kind.items():
        report.by_kind.setdefault(kind, Counter()).update(counts)
    report.bytes_fed += part.bytes_fed
    report.failures.extend(part.failures)
    report.pool_seconds = max(report.pool_seconds, part.pool_seconds)
    report.warm_up_seconds = max(report.warm_up_seconds, part.warm_up_seconds)
    report.kernel_backend = report.kernel_backend or part.kernel_backend
    if part.slowest.get("seconds", -1.0) > report.slowest.get("seconds", -1.0):
        report.slowest = part.slowest


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def format_report(report: FuzzReport) -> str:
    """A fuzz run's figures and failures as text for the terminal."""
    lines = [
        f"seed {report.seed}, cases {report.start}..{report.start + report.cases - 1} "
        f"({report.cases} of {report.requested_cases} requested), "
        f"chunk_bytes {report.chunk_bytes or 'mixed (mostly 1 MiB, 25% small)'}",
        f"time {report.seconds:.1f} s (+ {report.pool_seconds:.1f} s pool, "
        f"{report.warm_up_seconds:.1f} s loading the {report.kernel_backend} kernels"
        f"{', NUMBA_BOUNDSCHECK=' + os.environ['NUMBA_BOUNDSCHECK'] if os.environ.get('NUMBA_BOUNDSCHECK') else ''}), "
        f"{report.cases_per_second:,.0f} cases/s, {report.bytes_fed:,} bytes fed",
        "outcomes:",
    ]
    for k in OK_OUTCOMES + FAILURE_KINDS:
        if report.counts.get(k) or k in OK_OUTCOMES:
            lines.append(f"  {k:24} {report.counts.get(k, 0):>8,}{'   <-- FAILURE' if k in FAILURE_KINDS else ''}")
    lines.append("by kind:")
    for kind in (*dict.fromkeys(ROTATION), "bomb"):
        c = report.by_kind.get(kind)
        if not c:
            continue
        lines.append(f"  {kind:15} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    s = report.slowest
    if s:
        lines.append(
            f"slowest case: {s['seconds'] * 1000:.1f} ms "
            f"(case {s['case']}, {s['kind']}, {s['bytes']} bytes, chunk_bytes {s['chunk_bytes']})"
        )
    lines.append(f"failures: {len(report.failures)}")
    for f in report.failures[:20]:
        last_line = f["reason"].strip().splitlines()[-1] if f["reason"] else ""
        lines.append(f"  case {f['case']} {f['kind']}: {f['failure']}: {last_line}")
        lines.append(f"    {f.get('file', '')} {f['bytes']} bytes: {f.get('hex', '')[:160]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, failures_dir: Path = DEFAULT_FAILURES_DIR) -> int:
    """The command line (see the module docstring); returns the exit status.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
        failures_dir: Default of ``--failures-dir``.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100_000, help="number of cases (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--start", type=int, default=0, help="index of the first case (replay: --start I --cases 1)")
    parser.add_argument("--seconds", type=float, default=None, help="optional time budget; stop early when used up")
    parser.add_argument(
        "--chunk-bytes", type=int, default=None, help="chunk_bytes for every case (e.g. 4096); default mixed"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per-case watchdog in seconds (default 5)")
    parser.add_argument("--pool", type=int, default=300, help="valid segments precomputed for mutation (default 300)")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the differential check against the reference decoder"
    )
    parser.add_argument(
        "--no-oracle", action="store_true", help="skip the differential check against the NumPy decoder"
    )
    parser.add_argument(
        "--failures-dir", type=Path, default=failures_dir, help=f"where failing inputs go (default {failures_dir})"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes to run the cases in (default 1)")
    parser.add_argument("--nice", type=int, default=0, help="raise the worker processes' niceness (with --workers)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    try:
        faulthandler.enable()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # stderr without a file descriptor
        pass

    def progress(r: FuzzReport) -> None:
        fails = sum(r.counts.get(k, 0) for k in FAILURE_KINDS)
        print(f"  ... {r.cases:,} cases, {r.cases_per_second:,.0f}/s, {fails} failures", file=sys.stderr, flush=True)

    report = run_fuzz(
        args.cases,
        args.seed,
        start=args.start,
        seconds=args.seconds,
        chunk_bytes=args.chunk_bytes,
        failures_dir=args.failures_dir,
        timeout=args.timeout,
        pool_size=args.pool,
        reference=not args.no_reference,
        oracle=not args.no_oracle,
        progress=None if args.quiet else progress,
        workers=args.workers,
        nice=args.nice,
    )
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
