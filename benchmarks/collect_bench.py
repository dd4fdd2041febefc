#!/usr/bin/env python
"""Benchmark herocollector against the reference ``data_logger.Collector``.

One run of this script:

1. builds a logger directory with the real ``data_logger.DataLogger`` (about 20 labelled
   streams of sparse vectors, seeded, reused from ``--workdir`` when the parameters match);
2. times, warm and in this one process, ``data_logger.Collector([run]).collect(writer)``,
   ``herocollector.Collector([run]).collect(writer)`` (both into a real
   ``pyarrow.ipc.new_file`` writer with the same schema, on a file removed before each
   repetition) and a bare zstd decompression of every segment (the floor: streaming with
   ``read_across_frames=True``; the data logger writes one zstd frame per record, nothing
   can decode the run faster than zstd can inflate it); herocollector and the floor
   alternate, so both see the same machine load;
3. times both collectors cold, each in a fresh process: imports, (for herocollector) loading
   the compiled kernels from numba's cache, and the first collect; and once more with an
   empty kernel cache, which gives numba's first-compile cost;
4. checks the outputs: on a single-segment run both IPC files must hold identical tables; on
   a rotated run they may differ only in ``epoch`` (the reference restarts epoch ticks in
   every segment file, where the logger carries them over from the previous file).
   herocollector's output is also checked against the generated data itself (exact on
   rotated runs too);
5. measures the peak RSS increase of collecting a large single-segment run
   (``--memory-records``) with herocollector in a fresh child process;
6. prints a summary (times, records/s, MB/s, ratios, memory) and optionally writes JSON.

Exit status: 0; 1 if ``--min-speedup`` is given and the reference/herocollector ratio is
below it; 2 if an output check failed.

Examples::

    python benchmarks/collect_bench.py --records 200000 --workdir
    python benchmarks/collect_bench.py --records 200000 --rotate-bytes 312500
    python benchmarks/collect_bench.py --workdir --json benchmarks/results/bench.json
    python benchmarks/collect_bench.py --memory-records 0 --cold-repeat 0 --min-speedup 5
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc

# data_logger (which pulls in graphblas), herocollector and zstandard are imported where they
# are used, so the memory-measuring child imports only what the measured mode needs.

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # benchmark this checkout's herocollector, not an installed one
DEFAULT_PERSISTENT_WORKDIR = HERE / "_data"
DEFAULT_ROTATE_BYTES = 256 << 20
GENERATOR_VERSION = 1  # bump when the generated data changes, so stale runs are rebuilt
MANIFEST = "bench_manifest.json"

EPOCH_SCALE = 1e-3
VALUE_SCALE = 1e-6
MAX_NNZ = 15
INDEX_RANGE = 1000
MEAN_GAP = 0.02  # mean epoch gap between consecutive records (exponential)
GEN_CHUNK = 1 << 16


# ----------------------------------------------------------------------------------------
# Data generation
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunParams:
    """Everything that determines the contents of a generated run."""

    records: int
    streams: int
    seed: int
    rotate_bytes: int

    def name(self) -> str:
        return f"run-r{self.records}-s{self.streams}-seed{self.seed}-rot{self.rotate_bytes}"

    def manifest(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "generator_version": GENERATOR_VERSION,
            "data_logger_version": version("disco-data-logger"),
            "records": self.records,
            "streams": self.streams,
            "seed": self.seed,
            "rotate_bytes": self.rotate_bytes,
            "epoch_scale": EPOCH_SCALE,
            "value_scale": VALUE_SCALE,
        }


def stream_labels(n_streams: int) -> list[dict[str, Any]]:
    """Labels for ``n_streams`` streams: entities x measures of one simulation run."""
    measures = ["inventory", "backlog", "orders", "shipments", "cost"]
    labels = []
    for k in range(n_streams):
        labels.append(
            {
                "organisation": "disco-bench",
                "model": "supply_chain",
                "experiment": "baseline",
                "run": "run-0001",
                "replication": 1,
                "entity": f"node-{k // len(measures):02d}",
                "measure": measures[k % len(measures)],
            }
        )
    return labels


@dataclass
class Chunk:
    """A chunk of generated records; record ``i`` holds ``flat[offsets[i]:offsets[i+1]]``."""

    stream_ids: np.ndarray  # uint32, 1-based as the data logger numbers them
    epochs: np.ndarray  # float64, increasing
    offsets: np.ndarray  # int64, len = records + 1
    indices: np.ndarray  # int64, strictly increasing per record, < INDEX_RANGE
    values: np.ndarray  # float64, 3 decimals


def generate(params: RunParams) -> Iterator[Chunk]:
    """The run's records, deterministically from the seed, in chunks."""
    rng = np.random.default_rng(params.seed)
    weights = rng.dirichlet(np.full(params.streams, 0.8))  # some streams are busier
    magnitude = 10.0 ** rng.integers(0, 4, params.streams)  # per-stream value magnitude
    t0 = 0.0
    done = 0
    while done < params.records:
        m = min(GEN_CHUNK, params.records - done)
        sid = rng.choice(params.streams, size=m, p=weights).astype(np.uint32) + 1
        epochs = t0 + np.cumsum(rng.exponential(MEAN_GAP, m))
        t0 = float(epochs[-1])
        n = rng.integers(0, MAX_NNZ + 1, m)
        # n distinct sorted indices in [0, INDEX_RANGE): a sorted multiset from
        # [0, INDEX_RANGE - n] plus 0..n-1 is strictly increasing and stays in range.
        raw = np.floor(rng.random((m, MAX_NNZ)) * (INDEX_RANGE - n + 1)[:, None]).astype(np.int64)
        used = np.arange(MAX_NNZ)[None, :] < n[:, None]
        raw[~used] = np.iinfo(np.int64).max
        raw.sort(axis=1)
        raw += np.arange(MAX_NNZ)[None, :]
        indices = raw[used]  # row-major: each record's sorted indices, in record order
        scale = np.repeat(magnitude[sid - 1], n)
        values = np.round(rng.normal(0.0, 1.0, indices.size) * scale, 3)
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])
        yield Chunk(sid, epochs, offsets, indices, values)
        done += m


def build_run(workdir: Path, params: RunParams, log: Callable[[str], None]) -> Path:
    """Create (or reuse) the logger directory for ``params`` under ``workdir``."""
    path = workdir / params.name()
    manifest_path = path / MANIFEST
    wanted = params.manifest()
    if manifest_path.is_file() and (path / "_DONE").exists():
        try:
            if json.loads(manifest_path.read_text()) == wanted:
                log(f"reusing {path}")
                return path
        except (OSError, ValueError):
            pass
    if path.exists():
        shutil.rmtree(path)
    from data_logger import DataLogger

    log(f"building {path} ({params.records:,} records, rotate_bytes={params.rotate_bytes:,}) ...")
    t = time.perf_counter()
    logger = DataLogger(path, rotate_bytes=params.rotate_bytes)
    try:
        sids = [
            logger.register_stream(labels, epoch_scale=EPOCH_SCALE, value_scale=VALUE_SCALE)
            for labels in stream_labels(params.streams)
        ]
        assert sids == list(range(1, params.streams + 1)), sids
        record = logger.record
        for chunk in generate(params):
            off = chunk.offsets.tolist()
            for i, (sid, epoch) in enumerate(zip(chunk.stream_ids.tolist(), chunk.epochs.tolist())):
                a, b = off[i], off[i + 1]
                record(sid, epoch, chunk.indices[a:b], chunk.values[a:b])
    finally:
        logger.close()
    manifest_path.write_text(json.dumps(wanted, indent=2))
    log(f"built in {time.perf_counter() - t:.1f} s")
    return path


def segments_of(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.seg.zst") if p.is_file())


# ----------------------------------------------------------------------------------------
# Timed operations
# ----------------------------------------------------------------------------------------


BASE_SCHEMA = pa.schema(
    [
        pa.field("stream_id", pa.uint32()),
        pa.field("epoch", pa.float64()),
        pa.field("indices", pa.list_(pa.int64())),
        pa.field("values", pa.list_(pa.float64())),
    ]
)
"""The output schema without labels (herocollector's ``Collector.schema_for([])``), built
here so that timing the reference does not import herocollector."""


def hero_schema() -> pa.Schema:
    from herocollector import Collector

    schema = Collector.schema_for([])
    assert schema == BASE_SCHEMA, schema
    return schema


def collect_reference(run: Path, out: Path, schema: pa.Schema) -> bool:
    from data_logger import Collector

    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        return Collector([run]).collect(writer)


def collect_hero(
    run: Path, out: Path, schema: pa.Schema, chunk_bytes: int | None = None, threads: int | None = None
) -> bool:
    """herocollector's collect of ``run`` into an IPC file; ``threads`` None: the library's default (the cores)."""
    from herocollector import Collector

    kwargs = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        return Collector([run], **kwargs).collect(writer, threads=threads)


def zstd_floor(segments: list[Path]) -> int:
    """Decompress every segment, reading all output; returns the decompressed byte count."""
    import zstandard

    total = 0
    buf = bytearray(1 << 20)
    for seg in segments:
        with open(seg, "rb") as fh:
            reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            while True:
                got = reader.readinto(buf)
                if not got:
                    break
                total += got
    return total


# ----------------------------------------------------------------------------------------
# Output checks
# ----------------------------------------------------------------------------------------


def read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path), "r") as src:
        return pa.ipc.open_file(src).read_all()


def _flat(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A column as (values, offsets-or-None) NumPy arrays (list columns flattened)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_list(col.type):
        offsets = col.offsets.to_numpy()
        return col.flatten().to_numpy(zero_copy_only=False), offsets - offsets[0]
    return col.to_numpy(zero_copy_only=False), None


def diff_tables(a: pa.Table, b: pa.Table, names: tuple[str, str] = ("a", "b")) -> dict[str, str]:
    """Per differing column, a description of the first difference ({} if equal)."""
    na, nb = names
    if a.schema != b.schema:
        return {"<schema>": f"{a.schema} != {b.schema}"}
    if a.num_rows != b.num_rows:
        return {"<rows>": f"{a.num_rows} != {b.num_rows}"}
    out: dict[str, str] = {}
    for name in a.column_names:
        if a.column(name).equals(b.column(name)):
            continue
        va, oa = _flat(a, name)
        vb, ob = _flat(b, name)
        if oa is not None:
            assert ob is not None
            if not np.array_equal(oa, ob):
                row = int(np.flatnonzero(oa != ob)[0]) - 1
                out[name] = f"list lengths differ first at row {row}"
                continue
            bad = np.flatnonzero(va != vb)
            if bad.size == 0:
                out[name] = "differs in nulls or chunk layout only"
                continue
            rows = np.searchsorted(oa, bad, side="right") - 1
            out[name] = (
                f"{np.unique(rows).size} rows differ, first at row {int(rows[0])}: "
                f"{na} {va[bad[0]].item()!r} != {nb} {vb[bad[0]].item()!r}"
            )
        else:
            bad = np.flatnonzero(va != vb)
            if bad.size == 0:
                out[name] = "differs in nulls or chunk layout only"
                continue
            out[name] = (
                f"{bad.size} rows differ, first at row {int(bad[0])}: "
                f"{na} {va[bad[0]].item()!r} != {nb} {vb[bad[0]].item()!r}"
            )
    return out


def expected_table(params: RunParams, schema: pa.Schema) -> pa.Table:
    """What a correct collector must produce: the generated data, quantised as the logger does."""
    from herocollector.run.logdir import llround

    batches = []
    for c in generate(params):
        epoch = llround(c.epochs / EPOCH_SCALE).astype(np.float64) * EPOCH_SCALE
        values = llround(c.values / VALUE_SCALE).astype(np.float64) * VALUE_SCALE
        offsets = pa.array(c.offsets.astype(np.int32))
        batches.append(
            pa.RecordBatch.from_arrays(
                [
                    pa.array(c.stream_ids, type=pa.uint32()),
                    pa.array(epoch, type=pa.float64()),
                    pa.ListArray.from_arrays(offsets, pa.array(c.indices, type=pa.int64())),
                    pa.ListArray.from_arrays(offsets, pa.array(values, type=pa.float64())),
                ],
                schema=schema,
            )
        )
    return pa.Table.from_batches(batches, schema=schema)


# ----------------------------------------------------------------------------------------
# Fresh child processes: peak memory, cold start
# ----------------------------------------------------------------------------------------


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def vm_hwm_kib() -> int | None:
    """Peak RSS of this process image (``VmHWM``), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# Linux carries ru_maxrss across fork + exec: a child exec'd from this (by then large) process
# would start with this process's RSS as its "peak". So the measuring child is started by a
# small launcher process, whose own RSS is what the child inherits (a few MiB, far below the
# child's RSS after imports). VmHWM (per process image) is reported as a cross-check.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def warm_up_kernels() -> float:
    """Load (or compile) herocollector's kernels by decoding a tiny segment; seconds taken."""
    from herocollector.decode.codec import Records, SegmentDecoder, encode_segment

    t = time.perf_counter()
    data = encode_segment(Records.from_lists([1], [0], [[1]], [[1]]))
    assert len(SegmentDecoder([1]).decode_bytes(data)) == 1
    return time.perf_counter() - t


def measure_memory_child(mode: str, run: Path, out: Path, chunk_bytes: int | None) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS after imports, and after collecting ``run``.

    For herocollector the kernels are loaded first, and the increase is reported both from
    before that load (numba's code generator and the machine code included) and from after
    it (what collecting itself takes).
    """
    kernels_mib: float | None = None
    if mode == "hero":
        import herocollector  # noqa: F401

        schema = hero_schema()
        fn = lambda: collect_hero(run, out, schema, chunk_bytes)  # noqa: E731
    elif mode == "reference":
        import data_logger  # noqa: F401

        schema = BASE_SCHEMA
        fn = lambda: collect_reference(run, out, schema)  # noqa: E731
    else:
        raise SystemExit(f"unknown memory mode {mode!r}")
    imports, hwm_imports = maxrss_kib(), vm_hwm_kib()
    if mode == "hero":
        warm_up_kernels()
        kernels_mib = (maxrss_kib() - imports) / 1024.0
    before, hwm_before = maxrss_kib(), vm_hwm_kib()
    t = time.perf_counter()
    ok = fn()
    seconds = time.perf_counter() - t
    after, hwm_after = maxrss_kib(), vm_hwm_kib()
    rows = read_rows(out)
    return {
        "mode": mode,
        "ok": bool(ok),
        "seconds": seconds,
        "rows": rows,
        "maxrss_after_imports_kib": imports,
        "maxrss_before_collect_kib": before,
        "maxrss_after_collect_kib": after,
        "kernel_load_mib": kernels_mib,
        "increase_mib": (after - before) / 1024.0,
        "increase_from_imports_mib": (after - imports) / 1024.0,
        "vm_hwm_after_imports_kib": hwm_imports,
        "vm_hwm_after_collect_kib": hwm_after,
        "vm_hwm_increase_mib": None if hwm_before is None else (hwm_after - hwm_before) / 1024.0,
    }


def read_rows(path: Path) -> int:
    with pa.memory_map(str(path), "r") as src:
        reader = pa.ipc.open_file(src)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _child(args: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """Run this script in a fresh process (through the launcher); its JSON and wall time."""
    cmd = [sys.executable, "-S", "-c", _LAUNCHER, sys.executable, str(Path(__file__).resolve()), *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed with status {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def measure_memory(mode: str, run: Path, out: Path, chunk_bytes: int | None) -> dict[str, Any]:
    args = ["--measure-memory", mode, "--memory-run", str(run), "--memory-out", str(out)]
    if chunk_bytes is not None:
        args += ["--chunk-bytes", str(chunk_bytes)]
    return _child(args)[0]


def measure_cold_child(mode: str, run: Path, out: Path, chunk_bytes: int | None) -> dict[str, Any]:
    """Runs in a fresh process: import, then collect twice (cold, then warm).

    The first herocollector collect includes loading the compiled kernels from numba's cache
    (or compiling them, with an empty cache); the second shows what is left warm.
    """
    t0 = time.perf_counter()
    if mode == "hero":
        import herocollector  # noqa: F401

        def fn() -> bool:
            return collect_hero(run, out, BASE_SCHEMA, chunk_bytes)
    elif mode == "reference":
        import data_logger  # noqa: F401

        def fn() -> bool:
            return collect_reference(run, out, BASE_SCHEMA)
    else:
        raise SystemExit(f"unknown cold mode {mode!r}")
    t1 = time.perf_counter()
    ok = fn()
    t2 = time.perf_counter()
    numba_imported = "numba" in sys.modules  # only to build the kernels (an empty cache)
    out.unlink(missing_ok=True)
    ok = fn() and ok
    t3 = time.perf_counter()
    backend = None
    if mode == "hero":
        from herocollector.decode import native

        backend = native.backend().name
    return {
        "mode": mode,
        "ok": bool(ok),
        "imports": t1 - t0,
        "kernel_backend": backend,
        "numba_imported": numba_imported,
        "first_collect": t2 - t1,
        "second_collect": t3 - t2,
        "cold": t2 - t0,
        "maxrss_mib": maxrss_kib() / 1024.0,
    }


def measure_cold(
    mode: str, run: Path, out: Path, chunk_bytes: int | None, kernel_cache: str | None = None
) -> dict[str, Any]:
    """A cold collect in a fresh process; ``kernel_cache`` overrides numba's cache directory.

    Python may write bytecode caches, as in an installed package (pip compiles them), even
    when this process runs with ``PYTHONDONTWRITEBYTECODE``: the first cold run writes them.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if kernel_cache is not None:
        env["NUMBA_CACHE_DIR"] = kernel_cache
    args = ["--measure-cold", mode, "--memory-run", str(run), "--memory-out", str(out)]
    if chunk_bytes is not None:
        args += ["--chunk-bytes", str(chunk_bytes)]
    figures, wall = _child(args, env)
    figures["process_wall"] = wall  # interpreter start-up and exit included
    out.unlink(missing_ok=True)
    return figures


PARALLEL_ROTATED_RECORDS = 200_000
PARALLEL_ROTATE_BYTES = 312_500
"""The rotated run of the decode_threads comparison: 200k records in 34 segments."""


def measure_parallel(
    run: Path, workdir: Path, schema: pa.Schema, chunk_bytes: int | None, repeat: int
) -> dict[str, Any]:
    """``decode_threads`` 1 and 2 against the single-threaded zstd floor of the same files, side by side.

    The three alternate, ``repeat`` times each, so that all see the same machine load; the
    two outputs must be identical tables.
    """
    segments = segments_of(run)
    outs = {threads: workdir / f"out-parallel-{threads}.arrow" for threads in (1, 2)}
    for threads, out in outs.items():  # warm: page cache, kernels, memory pool
        timed(functools.partial(collect_hero, run, out, schema, chunk_bytes, threads), out)
    zstd_floor(segments)
    times: dict[str, list[float]] = {"zstd_floor": [], "threads_1": [], "threads_2": []}
    for _ in range(repeat):
        times["zstd_floor"].append(timed(lambda: zstd_floor(segments))[0])
        for threads, out in outs.items():
            times[f"threads_{threads}"].append(
                timed(functools.partial(collect_hero, run, out, schema, chunk_bytes, threads), out)[0]
            )
    one, two = read_table(outs[1]), read_table(outs[2])
    diff = diff_tables(one, two, ("decode_threads 1", "decode_threads 2"))
    rows = one.num_rows
    del one, two
    for out in outs.values():
        out.unlink(missing_ok=True)
    timings = {k: summarise(v) for k, v in times.items()}
    floor = timings["zstd_floor"]
    return {
        "path": str(run),
        "records": rows,
        "segments": len(segments),
        "compressed_bytes": sum(p.stat().st_size for p in segments),
        "timings": timings,
        "ratios": {
            f"{k}_over_floor_{how}": timings[k][how] / floor[how]
            for k in ("threads_1", "threads_2")
            for how in ("best", "median")
        }
        | {"speedup_2_over_1_best": timings["threads_1"]["best"] / timings["threads_2"]["best"]},
        "check": {
            "ok": not diff,
            "diff": diff,
            "result": f"IDENTICAL ({rows:,} rows)" if not diff else f"DIFFERENT: {diff}",
        },
    }


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------


def summarise(times: list[float]) -> dict[str, Any]:
    return {"best": min(times), "median": statistics.median(times), "all": times}


def print_report(res: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    run = res["run"]
    rows.append(("run", f"{run['path']}"))
    rows.append(
        (
            "data",
            f"{run['records']:,} records, {run['streams']} streams, {run['segments']} segment(s), "
            f"{run['compressed_bytes'] / 1e6:.2f} MB compressed, {run['decompressed_bytes'] / 1e6:.2f} MB raw",
        )
    )
    rows.append(("repeat", f"{res['repeat']} (best / median, warm page cache, one process)"))
    t = res["timings"]
    mb, raw = run["compressed_bytes"] / 1e6, run["decompressed_bytes"] / 1e6
    for key, label in (
        ("reference", "data_logger.Collector (warm)"),
        ("hero", "herocollector.Collector (warm)"),
        ("zstd_floor", "bare zstd decompress (floor)"),
    ):
        best, med = t[key]["best"], t[key]["median"]
        rows.append(
            (
                label,
                f"best {best * 1e3:9.1f} ms   median {med * 1e3:9.1f} ms   "
                f"{run['records'] / best / 1e6:7.3f} M records/s   {mb / best:7.1f} MB/s ({raw / best:7.1f} MB/s raw)",
            )
        )
    r = res["ratios"]
    rows.append(
        (
            "hero / zstd floor (warm)",
            f"{r['hero_over_floor_best']:.2f}x (best)   {r['hero_over_floor_median']:.2f}x (median)",
        )
    )
    rows.append(
        ("speed-up reference/hero (warm)", f"{r['speedup_best']:.1f}x (best)   {r['speedup_median']:.1f}x (median)")
    )
    cold = res.get("cold") or {}
    for mode, label in (
        ("hero", "herocollector cold"),
        ("reference", "data_logger cold"),
        ("hero_compile", "herocollector, empty kernel cache"),
    ):
        c = cold.get(mode)
        if not c:
            continue
        kernels = (
            ""
            if c.get("kernel_backend") is None
            else (f" ({c['kernel_backend']} kernels{', numba imported' if c['numba_imported'] else ''})")
        )
        rows.append(
            (
                label,
                f"{c['cold'] * 1e3:8.0f} ms = imports {c['imports'] * 1e3:.0f} ms + first collect{kernels} "
                f"{c['first_collect'] * 1e3:.0f} ms (then warm {c['second_collect'] * 1e3:.0f} ms); "
                f"process {c['process_wall'] * 1e3:.0f} ms with interpreter start-up; peak RSS {c['maxrss_mib']:.0f} MiB",
            )
        )
    if "hero" in cold:
        c = cold["hero"]
        rows.append(
            (
                "herocollector first-call cost",
                f"{(c['first_collect'] - c['second_collect']) * 1e3:.0f} ms "
                "(loading the kernels and first touches: first collect - second collect, same process)",
            )
        )
    if "hero_compile" in cold:
        c = cold["hero_compile"]
        rows.append(
            (
                "numba first compile",
                f"{(c['first_collect'] - c['second_collect']) * 1e3:.0f} ms "
                "(building the kernels into an empty cache: once per installation, CPU and version)",
            )
        )
    if "cold_speedup" in r:
        rows.append(
            (
                "speed-up reference warm / hero cold",
                f"{r['cold_speedup']:.1f}x (hero: imports + cache load + first collect)",
            )
        )
        rows.append(
            (
                "speed-up, both cold",
                f"{r['cold_speedup_both_cold']:.1f}x (each: imports + first collect, fresh process)",
            )
        )
        rows.append(
            ("speed-up, both cold, whole process", f"{r['cold_speedup_process']:.1f}x (interpreter start-up included)")
        )
    for p in res.get("parallel", []):
        t, r = p["timings"], p["ratios"]
        where = (
            f"{p['label']}: {p['records']:,} records, {p['segments']} segment(s), {p['compressed_bytes'] / 1e6:.1f} MB"
        )
        rows.append((f"decode_threads ({p['label']})", where))
        for key, label in (
            ("zstd_floor", "zstd floor, one thread"),
            ("threads_1", "threads 1"),
            ("threads_2", "threads 2"),
        ):
            ratio = "" if key == "zstd_floor" else f"   {r[key + '_over_floor_best']:.2f}x floor (best)   "
            ratio += "" if key == "zstd_floor" else f"{r[key + '_over_floor_median']:.2f}x (median)"
            rows.append(
                (
                    f"  {label}",
                    f"best {t[key]['best'] * 1e3:8.1f} ms   median {t[key]['median'] * 1e3:8.1f} ms   "
                    f"{p['records'] / t[key]['best'] / 1e6:6.2f} M records/s{ratio}",
                )
            )
        rows.append(("  threads 2 / threads 1", f"{r['speedup_2_over_1_best']:.2f}x faster (best)"))
    for name, check in res["checks"].items():
        rows.append((f"check: {name}", check["result"]))
    for m in res.get("memory", []):
        hwm = "" if m["vm_hwm_increase_mib"] is None else f"; VmHWM +{m['vm_hwm_increase_mib']:.1f} MiB"
        load = (
            ""
            if m.get("kernel_load_mib") is None
            else (
                f"; +{m['increase_from_imports_mib']:.1f} MiB counting the kernel load ({m['kernel_load_mib']:.1f} MiB)"
            )
        )
        rows.append(
            (
                f"peak memory: {m['mode']}",
                f"+{m['increase_mib']:.1f} MiB (maxrss {m['maxrss_before_collect_kib'] / 1024:.1f} -> "
                f"{m['maxrss_after_collect_kib'] / 1024:.1f} MiB{hwm}){load} collecting {m['records']:,} records / "
                f"{m['compressed_bytes'] / 1e6:.1f} MB in {m['segments']} segment(s), {m['seconds']:.2f} s",
            )
        )
    if res.get("min_speedup") is not None:
        rows.append(("min-speedup", f"{res['min_speedup']}: {'PASS' if res['speedup_ok'] else 'FAIL'}"))
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="collect benchmark", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for k, v in rows:
            table.add_row(k, v)
        Console(width=220).print(table)
    except ImportError:  # pragma: no cover
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--records", type=int, default=200_000, help="records in the timed run (default 200000)")
    p.add_argument("--streams", type=int, default=20, help="streams per run (default 20)")
    p.add_argument("--seed", type=int, default=20240601, help="seed of the data generator")
    p.add_argument(
        "--rotate-bytes",
        type=int,
        default=DEFAULT_ROTATE_BYTES,
        help="DataLogger rotate_bytes for the timed run (default 256 MiB = one segment)",
    )
    p.add_argument("--repeat", type=int, default=7, help="timed repetitions of herocollector and the floor (default 7)")
    p.add_argument("--reference-repeat", type=int, default=3, help="timed repetitions of the reference (default 3)")
    p.add_argument(
        "--cold-repeat",
        type=int,
        default=3,
        help="fresh processes timed for herocollector's cold start (best kept; 0 skips all cold runs; default 3)",
    )
    p.add_argument(
        "--workdir",
        nargs="?",
        const=str(DEFAULT_PERSISTENT_WORKDIR),
        default=None,
        help="keep and reuse runs here (without a value: benchmarks/_data); default: a temp dir removed at exit",
    )
    p.add_argument(
        "--memory-records",
        type=int,
        default=2_000_000,
        help="records of the single-segment run for the peak-memory measurement (0 skips; default 2000000)",
    )
    p.add_argument(
        "--memory-reference",
        action="store_true",
        help="also measure the reference collector's peak memory (slow, large)",
    )
    p.add_argument(
        "--parallel-repeat",
        type=int,
        default=7,
        help="timed repetitions of the decode_threads 1 / 2 runs against their zstd floor (0 skips; default 7)",
    )
    p.add_argument(
        "--large-records",
        type=int,
        default=1_000_000,
        help="records of the single-segment run timed with decode_threads 1 and 2 (0 skips; default 1000000)",
    )
    p.add_argument("--chunk-bytes", type=int, default=None, help="herocollector chunk_bytes (default: library default)")
    p.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    p.add_argument(
        "--min-speedup",
        type=float,
        default=None,
        help="exit 1 if the best-time ratio reference/herocollector is below this",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    # hidden: the measuring children
    p.add_argument("--measure-memory", choices=["hero", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--measure-cold", choices=["hero", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--memory-run", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--memory-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.records <= 0 or args.repeat <= 0 or args.streams <= 0 or args.memory_records < 0:
        p.error("--records, --repeat and --streams must be positive, --memory-records >= 0")
    if args.reference_repeat <= 0 or args.cold_repeat < 0:
        p.error("--reference-repeat must be positive, --cold-repeat >= 0")
    if args.parallel_repeat < 0 or args.large_records < 0:
        p.error("--parallel-repeat and --large-records must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_memory:
        print(json.dumps(measure_memory_child(args.measure_memory, args.memory_run, args.memory_out, args.chunk_bytes)))
        return 0
    if args.measure_cold:
        print(json.dumps(measure_cold_child(args.measure_cold, args.memory_run, args.memory_out, args.chunk_bytes)))
        return 0

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="collect_bench-")) if temp else Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}{' (temporary)' if temp else ''}")
    try:
        return run_benchmark(args, workdir, log)
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)


def timed(fn: Callable[[], Any], out: Path | None = None) -> tuple[float, Any]:
    """Seconds ``fn`` takes (``out`` removed first: truncating a big old file is no part of it)."""
    if out is not None:
        out.unlink(missing_ok=True)
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def run_benchmark(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> int:
    params = RunParams(args.records, args.streams, args.seed, args.rotate_bytes)
    run = build_run(workdir, params, log)
    segments = segments_of(run)
    compressed = sum(s.stat().st_size for s in segments)
    nonempty = [s for s in segments if s.stat().st_size > 0]
    schema = hero_schema()
    out_ref = workdir / "out-reference.arrow"
    out_hero = workdir / "out-herocollector.arrow"

    import data_logger  # noqa: F401  (import cost outside the timings)
    import zstandard  # noqa: F401

    log("warming up (kernels, page cache) ...")
    timed(lambda: collect_hero(run, out_hero, schema, args.chunk_bytes, 1), out_hero)
    decompressed = zstd_floor(segments)
    log("timing herocollector.Collector and the zstd floor, alternately ...")
    hero_times: list[float] = []
    floor_times: list[float] = []
    hero_ok = True
    for _ in range(args.repeat):
        seconds, _ = timed(lambda: zstd_floor(segments))
        floor_times.append(seconds)
        seconds, ok = timed(lambda: collect_hero(run, out_hero, schema, args.chunk_bytes, 1), out_hero)
        hero_times.append(seconds)
        hero_ok = hero_ok and bool(ok)
    log("timing data_logger.Collector ...")
    ref_times: list[float] = []
    ref_ok = True
    for _ in range(args.reference_repeat):
        seconds, ok = timed(lambda: collect_reference(run, out_ref, schema), out_ref)
        ref_times.append(seconds)
        ref_ok = ref_ok and bool(ok)

    timings = {"reference": summarise(ref_times), "hero": summarise(hero_times), "zstd_floor": summarise(floor_times)}
    ratios = {
        "speedup_best": timings["reference"]["best"] / timings["hero"]["best"],
        "speedup_median": timings["reference"]["median"] / timings["hero"]["median"],
        "hero_over_floor_best": timings["hero"]["best"] / timings["zstd_floor"]["best"],
        "hero_over_floor_median": timings["hero"]["median"] / timings["zstd_floor"]["median"],
    }

    cold: dict[str, Any] = {}
    if args.cold_repeat:
        out_cold = workdir / "out-cold.arrow"
        log(f"timing cold starts in {args.cold_repeat} fresh processes ...")
        runs = [measure_cold("hero", run, out_cold, args.chunk_bytes) for _ in range(args.cold_repeat)]
        cold["hero"] = min(runs, key=lambda c: c["cold"])
        cold["hero"]["all_cold"] = [c["cold"] for c in runs]
        log("timing a cold start with an empty kernel cache (numba compiles) ...")
        with tempfile.TemporaryDirectory(prefix="collect_bench-numba-") as empty:
            cold["hero_compile"] = measure_cold("hero", run, out_cold, args.chunk_bytes, kernel_cache=empty)
        log("timing the reference's cold start in fresh processes ...")
        runs = [measure_cold("reference", run, out_cold, None) for _ in range(min(args.cold_repeat, 2))]
        cold["reference"] = min(runs, key=lambda c: c["cold"])
        hero_cold = cold["hero"]
        ratios["cold_speedup"] = timings["reference"]["best"] / hero_cold["cold"]
        ratios["cold_speedup_both_cold"] = cold["reference"]["cold"] / hero_cold["cold"]
        ratios["cold_speedup_process"] = cold["reference"]["process_wall"] / hero_cold["process_wall"]

    log("checking outputs ...")
    checks: dict[str, dict[str, Any]] = {}
    failed = False
    ref_table = read_table(out_ref)
    hero_table = read_table(out_hero)
    diff = diff_tables(ref_table, hero_table, ("reference", "herocollector"))
    if len(nonempty) <= 1:
        ok = not diff and ref_ok and hero_ok
        checks["reference == herocollector"] = {
            "ok": ok,
            "diff": diff,
            "result": (
                f"IDENTICAL ({hero_table.num_rows:,} rows, single segment)"
                if ok
                else f"DIFFERENT: {diff or 'collect returned False'}"
            ),
        }
    else:
        # A rotated run may differ from the reference only in epoch (the reference restarts
        # epoch ticks in every segment file).
        ok = set(diff) <= {"epoch"} and ref_ok and hero_ok
        checks["reference vs herocollector (rotated)"] = {
            "ok": ok,
            "diff": diff,
            "result": (
                f"{'OK' if ok else 'UNEXPECTED'}: {len(nonempty)} segments; "
                + ("identical" if not diff else "; ".join(f"{k}: {v}" for k, v in diff.items()))
                + (" (expected: the reference restarts epoch ticks per segment)" if ok and diff else "")
            ),
        }
    failed |= not ok
    truth = expected_table(params, schema)
    tdiff = diff_tables(truth, hero_table, ("expected", "herocollector"))
    checks["herocollector == generated data"] = {
        "ok": not tdiff,
        "diff": tdiff,
        "result": (
            f"IDENTICAL ({hero_table.num_rows:,} rows, {len(nonempty)} segment(s))"
            if not tdiff
            else f"DIFFERENT: {tdiff}"
        ),
    }
    failed |= bool(tdiff)
    for mode, c in cold.items():
        if not c["ok"]:
            failed = True
            checks[f"cold run ({mode})"] = {"ok": False, "result": "collect returned False"}
    del ref_table, hero_table, truth

    parallel = []
    if args.parallel_repeat:
        shapes = [("rotated", RunParams(PARALLEL_ROTATED_RECORDS, args.streams, args.seed, PARALLEL_ROTATE_BYTES))]
        if args.large_records:
            shapes.append(
                ("single segment", RunParams(args.large_records, args.streams, args.seed, DEFAULT_ROTATE_BYTES))
            )
        for label, shape in shapes:
            prun = build_run(workdir, shape, log)
            log(f"timing decode_threads 1 and 2 against the zstd floor ({label}, {shape.records:,} records) ...")
            entry = measure_parallel(prun, workdir, schema, args.chunk_bytes, args.parallel_repeat)
            entry["label"] = label
            parallel.append(entry)
            check = entry["check"]
            checks[f"decode_threads 2 == 1 ({label})"] = check
            failed |= not check["ok"]

    memory = []
    if args.memory_records:
        mparams = RunParams(args.memory_records, args.streams, args.seed, DEFAULT_ROTATE_BYTES)
        mrun = build_run(workdir, mparams, log)
        msegs = segments_of(mrun)
        modes = ["hero"] + (["reference"] if args.memory_reference else [])
        for seg in msegs:  # into the page cache: measure decoding, not the disk
            with open(seg, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        for mode in modes:
            log(f"measuring peak memory ({mode}, {args.memory_records:,} records) in a child process ...")
            m = measure_memory(mode, mrun, workdir / f"out-memory-{mode}.arrow", args.chunk_bytes)
            m.update(
                records=args.memory_records, segments=len(msegs), compressed_bytes=sum(s.stat().st_size for s in msegs)
            )
            memory.append(m)
            (workdir / f"out-memory-{mode}.arrow").unlink(missing_ok=True)
            if m["rows"] != args.memory_records or not m["ok"]:
                failed = True
                checks[f"memory run rows ({mode})"] = {
                    "ok": False,
                    "result": f"DIFFERENT: {m['rows']:,} rows != {args.memory_records:,}",
                }

    throughput = {
        k: {
            "records_per_s": args.records / v["best"],
            "compressed_mb_per_s": compressed / 1e6 / v["best"],
            "decompressed_mb_per_s": decompressed / 1e6 / v["best"],
        }
        for k, v in timings.items()
    }
    res: dict[str, Any] = {
        "run": {
            "path": str(run),
            "records": args.records,
            "streams": args.streams,
            "seed": args.seed,
            "rotate_bytes": args.rotate_bytes,
            "segments": len(segments),
            "compressed_bytes": compressed,
            "decompressed_bytes": decompressed,
        },
        "repeat": args.repeat,
        "timings": timings,
        "throughput": throughput,
        "ratios": ratios,
        "cold": cold,
        "checks": checks,
        "memory": memory,
        "parallel": parallel,
        "min_speedup": args.min_speedup,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
        },
    }
    try:
        import numba
        import zstandard as zstd

        res["environment"].update(numba=numba.__version__, zstandard=zstd.__version__)
    except ImportError:  # pragma: no cover
        pass
    status = 2 if failed else 0
    if args.min_speedup is not None:
        res["speedup_ok"] = ratios["speedup_best"] >= args.min_speedup
        if not res["speedup_ok"] and status == 0:
            status = 1
    res["exit_status"] = status
    print_report(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str))
        log(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
