"""The compiled decode kernels as the decoder calls them, loaded as fast as possible.

The kernels are written with numba (:mod:`herocollector.decode.kernel`). numba caches their machine
code on disk, but loading it back costs a fresh process about 0.3 s: importing numba and
setting up its type system before the first call. That is most of a cold ``collect``. So
this module keeps its own cache of the kernels' machine code, as one object file per kernel
with C entry points (numba ``cfunc`` builds), and loads it with llvmlite's JIT linker alone,
without importing numba (about 40 ms, most of it loading LLVM's library):

* ``object`` backend (default): load the object files for this CPU, kernel source, numba and
  llvmlite version from the cache; on a miss (the first run, an upgrade, another CPU), build
  them with numba (a few seconds, once) and store them. Calls go through ``ctypes``, which
  releases the GIL for the duration of each call.
* ``numba`` backend: numba's dispatchers (numba's own cache, ``nogil=True``). Used when the
  object backend cannot be used (e.g. no writable cache directory), when
  ``NUMBA_BOUNDSCHECK`` is set (then nothing is cached: a bounds-checked build must not be
  stored or loaded in place of a normal one), or when ``HEROCOLLECTOR_KERNELS=numba``.

Both backends run the same kernel code, with the same signature, arrays in, tuple out.

Cache directories, in order: ``__pycache__`` next to this file,
``$XDG_CACHE_HOME/herocollector/numba`` (``~/.cache/herocollector/numba``), a per-user
directory in the temporary directory; or only ``$NUMBA_CACHE_DIR/herocollector`` when that
variable is set. Kernels are loaded from the first directory that has them (so a read-only
install can ship them in ``__pycache__``) and stored in the first writable one. Object files
are only loaded when they belong to the current user (or root), are not writable by others,
and match the SHA-256 recorded next to them.

The cache itself (key, directories, checks, the build) is :mod:`herocollector.decode.objcache`.
The first use on a machine compiles the kernels (seconds): that is logged at INFO
(:data:`COMPILING`, then the time it took) and told to :func:`compile_notices` callbacks, and
:func:`warm_up_in_background` starts it on a thread of its own.

This module must not import numba (nor :mod:`herocollector.decode.kernel`) at import time.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from herocollector.decode.objcache import build, cache_dirs, cache_key, provide_symbols, read_entry, store
from herocollector.decode.status import (  # noqa: F401 - re-exported: the decoder reads the codes here
    BAD_CAPACITY,
    CUT_SHORT,
    ENTRY_ARGS,
    FRAME_BAD_MAGIC,
    FRAME_INVALID,
    FRAME_OK,
    FRAME_TRUNCATED,
    KIND_SKIPPABLE,
    KIND_ZSTD,
    MAX_BLOCK_SIZE,
    MAX_VARINT_BYTES,
    MIN_FRAME_BYTES,
    NEED_MORE,
    OK,
    OUT_FULL,
    RAW,
    SCALED,
    SCALED_VALUES,
    TOO_MANY_VALUES,
    UNKNOWN_STREAM,
    VARINT_TOO_LONG,
)

log = logging.getLogger(__name__)

# The cache's functions under the names the tests (and older callers) use.
_cache_key, _cache_dirs, _read_entry = cache_key, cache_dirs, read_entry

BACKEND_ENV = "HEROCOLLECTOR_KERNELS"
"""Set to ``numba`` to use numba's dispatchers instead of the object-code cache."""
COMPILING = "compiling the decoder for this machine (once)"
"""What is said (logged at INFO, and told to :func:`compile_notices` callbacks) when the kernels
have to be compiled: the first run after an install, an upgrade, or on another CPU."""


# ----------------------------------------------------------------------------------------
# The public kernels (resolved to a backend on first use)
# ----------------------------------------------------------------------------------------


def scan_frames(
    buf: np.ndarray,
    start: int,
    length: int,
    final: bool,
    out_start: np.ndarray,
    out_end: np.ndarray,
    out_size: np.ndarray,
    out_kind: np.ndarray,
) -> tuple[int, int, int]:
    """Walk zstd frame headers; see :func:`herocollector.decode.kernel.scan_frames`."""
    frames = (out_start, out_end, out_size, out_kind)
    result: tuple[int, int, int] = backend().scan_frames(buf, start, length, final, *frames)
    return result


def decode_records(*args: Any) -> tuple[int, int, int, int, int, int]:
    """Decode records in one pass; see :func:`herocollector.decode.kernel.decode_records`."""
    result: tuple[int, int, int, int, int, int] = backend().decode_records(*args)
    return result


def varint_damage(data: np.ndarray, start: int, end: int, run: int) -> tuple[int, bool]:
    """Check varint lengths (diagnosis); see :func:`herocollector.decode.kernel.varint_damage`."""
    result: tuple[int, bool] = backend().varint_damage(data, start, end, run)
    return result


_lock = threading.Lock()
_backend: Any = None
fallback_reason: str | None = None  # why the object-code kernels did not load (so numba's run), if they did not


def backend() -> Any:
    """The kernels of this process: loaded (or built) once, on first use, by any thread."""
    global _backend
    if _backend is None:
        with _lock:
            if _backend is None:
                _backend = _choose()
    return _backend


def warm_up() -> str:
    """Load (or build) the kernels now, e.g. in a background thread at start-up.

    Returns:
        The backend's name: ``"object"`` or ``"numba"``.
    """
    kernels = backend()
    kernels.warm_up()
    return str(kernels.name)


def ready() -> bool:
    """Whether this process has its kernels loaded already (a decode would not wait for them)."""
    return _backend is not None


def warm_up_in_background() -> threading.Thread | None:
    """Start loading (or compiling) the kernels on a daemon thread.

    A service or command goes on starting while they compile; its first decode then waits
    only for what is left.

    Returns:
        The thread, or None when the kernels are loaded already.
    """
    if ready():
        return None

    def load() -> None:
        try:
            warm_up()
        except Exception:
            log.exception("loading the compiled kernels in the background failed")

    thread = threading.Thread(target=load, name="herocollector-kernels", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class CompileNotice:
    """The kernels are being compiled for this machine (``seconds`` None), or were (in ``seconds``).

    Attributes:
        seconds: None when the compile begins; how long it took when it ended.
    """

    seconds: float | None = None

    @property
    def message(self) -> str:
        """What to tell a user."""
        if self.seconds is None:
            return f"{COMPILING} ..."
        return f"compiled the decoder for this machine in {self.seconds:.1f} s (once: later runs load it at once)"


_listeners: list[Callable[[CompileNotice], None]] = []
_listeners_lock = threading.Lock()


@contextmanager
def compile_notices(callback: Callable[[CompileNotice], None]) -> Iterator[None]:
    """Tell ``callback`` when the kernels are compiled, while the block runs.

    It is called on the thread that loads the kernels (the first to decode, or the one of
    :func:`warm_up_in_background`), with the kernels' lock held: it must not decode. An
    exception from it is logged and otherwise ignored.

    Args:
        callback: Called with a :class:`CompileNotice` when a compile begins and when it ends.
    """
    with _listeners_lock:
        _listeners.append(callback)
    try:
        yield
    finally:
        with _listeners_lock:
            _listeners.remove(callback)


def _notify(notice: CompileNotice) -> None:
    log.info(notice.message)
    with _listeners_lock:
        listeners = list(_listeners)
    for callback in listeners:
        try:
            callback(notice)
        except Exception:
            log.exception("a compile notice callback failed")


def numba_requested() -> bool:
    """Whether numba's dispatchers were asked for (``HEROCOLLECTOR_KERNELS=numba``, ``NUMBA_BOUNDSCHECK``)."""
    if os.environ.get(BACKEND_ENV, "").strip().lower() == "numba":
        return True
    if "numba" in sys.modules:
        from numba.core import config

        return bool(config.BOUNDSCHECK)  # type: ignore[attr-defined]
    return bool(os.environ.get("NUMBA_BOUNDSCHECK", "").strip() not in ("", "0"))


def _choose() -> Any:
    global fallback_reason
    if numba_requested():
        return NumbaKernels()
    try:
        return ObjectKernels.load_or_build()
    except Exception as exc:  # noqa: BLE001 - any failure here only costs speed
        fallback_reason = f"{type(exc).__name__}: {exc}"
        log.warning(f"compiled kernels are loaded through numba ({fallback_reason})")
        return NumbaKernels()


# ----------------------------------------------------------------------------------------
# numba backend
# ----------------------------------------------------------------------------------------


class NumbaKernels:
    """The kernels through numba's dispatchers (``nogil=True``, numba's own cache)."""

    name = "numba"

    def __init__(self) -> None:
        from herocollector.decode import kernel

        self.scan_frames = kernel.scan_frames
        self.decode_records = kernel.decode_records
        self.varint_damage = kernel.varint_damage

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel and check its answers.

        Raises:
            RuntimeError: A kernel gave a wrong answer.
        """
        _exercise(self)


def _exercise(kernels: Any) -> None:
    """Call every kernel once (with the argument types the decoder uses) so it is ready.

    The answers are checked too: code that does not decode right is not used.

    Raises:
        RuntimeError: A kernel gave a wrong answer.
    """
    empty = np.zeros(0, dtype=np.uint8)
    frame = np.frombuffer(b"\x28\xb5\x2f\xfd\x20\x03\x19\x00\x00\x01\x02\x00", dtype=np.uint8).copy()
    frames = [np.zeros(4, dtype=np.int64) for _ in range(3)]
    kinds = np.zeros(4, dtype=np.uint8)
    got = [
        kernels.scan_frames(empty, 0, 0, True, *frames, kinds),
        kernels.scan_frames(frame, 0, frame.size, True, *frames, kinds),
    ]
    # A record of stream 1, tick delta +1, two elements: indices 3, 5 and values -1, 2.
    data = np.frombuffer(b"\x01\x02\x02\x03\x01\x01\x04", dtype=np.uint8).copy()
    ends = np.array([data.size], dtype=np.int64)
    table = np.array([-1, 0], dtype=np.int32)
    scales = np.array([0.5], dtype=np.float64)
    for mode in (SCALED, RAW, SCALED_VALUES):
        epoch, val, idx = np.zeros(2), np.zeros(2), np.zeros(2, np.int64)
        got.append(kernels.decode_records(
            data, 0, ends, 0, False, table, np.zeros(0, np.uint64), np.zeros(0, np.int32), np.ones(1, np.uint8),
            scales, scales, np.zeros(1, np.int64), mode, 2**31 - 1, np.zeros(2, np.uint32), np.zeros(2, np.int32),
            epoch, epoch.view(np.int64), np.zeros(3, np.int32), idx, val, val.view(np.int64),
        ))  # fmt: skip
        got.append((epoch[0], epoch.view(np.int64)[0]) if mode == SCALED else epoch.view(np.int64)[0])
        got.append((idx[:2].tolist(), val[:2].tolist() if mode != RAW else val.view(np.int64)[:2].tolist()))
    got.append(kernels.varint_damage(data, 0, data.size, 0))
    expected = [
        (0, 0, FRAME_OK), (1, frame.size, FRAME_OK),
        (OK, 7, 1, 1, 2, 0), (0.5, np.float64(0.5).view(np.int64)), ([3, 5], [-0.5, 1.0]),
        (OK, 7, 1, 1, 2, 0), 1, ([3, 5], [-1, 2]),
        (OK, 7, 1, 1, 2, 0), 1, ([3, 5], [-0.5, 1.0]),
        (0, False),
    ]  # fmt: skip
    if got != expected:
        raise RuntimeError(f"the {kernels.name} kernels decode a known record wrongly: {got} != {expected}")


# ----------------------------------------------------------------------------------------
# object backend
# ----------------------------------------------------------------------------------------


def _pointer(array: np.ndarray, dtype: type, writable: bool = False) -> int:
    """The address of a contiguous array of ``dtype`` (checked: the kernel trusts lengths)."""
    if (
        array.dtype != dtype
        or array.ndim != 1
        or not array.flags.c_contiguous
        or (writable and not array.flags.writeable)
    ):
        what = f"contiguous{' writable' if writable else ''} 1-d {np.dtype(dtype)}"
        raise TypeError(f"kernel argument must be a {what} array")
    return int(array.__array_interface__["data"][0])


def _address(array: np.ndarray) -> int:
    """The address of an array's first element."""
    return int(array.__array_interface__["data"][0])


class ObjectKernels:
    """The kernels as machine code loaded by llvmlite's JIT linker, called through ctypes."""

    name = "object"

    def __init__(self, functions: dict[str, Callable[..., None]], engines: list[Any]) -> None:
        self._functions = functions
        self._engines = engines  # the loaded code lives as long as its engine

    @classmethod
    def load_or_build(cls) -> ObjectKernels:
        """Load the kernels for this machine from the cache, building them on a miss.

        Raises:
            Exception: The kernels can be neither loaded nor built and stored.
        """
        import llvmlite.binding as llvm  # type: ignore[import-untyped]  # llvmlite ships no type information

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        key = cache_key(llvm)
        for directory in cache_dirs():
            entry = read_entry(directory, key)
            if entry is not None:
                try:
                    return cls._load(llvm, *entry)
                except Exception as exc:  # noqa: BLE001 - a bad entry is rebuilt
                    log.warning(f"ignoring cached kernels in {directory}: {exc}")
        _notify(CompileNotice())
        started = time.monotonic()
        meta, objects = build(llvm)
        kernels = cls._load(llvm, meta, objects)  # check before storing
        store(key, meta, objects)
        _notify(CompileNotice(time.monotonic() - started))
        return kernels

    @classmethod
    def _load(cls, llvm: Any, meta: dict[str, Any], objects: dict[str, bytes]) -> ObjectKernels:
        target = llvm.Target.from_default_triple()
        machine = target.create_target_machine(
            cpu=llvm.get_host_cpu_name(),
            features=llvm.get_host_cpu_features().flatten(),
            opt=3,
            reloc="default",
            codemodel="jitdefault",
        )
        provide_symbols(llvm, meta["externals"])
        functions: dict[str, Callable[..., None]] = {}
        engines = []
        for name, info in meta["kernels"].items():
            engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
            engine.add_object_file(llvm.ObjectFileRef.from_data(objects[name]))
            engine.finalize_object()
            address = engine.get_function_address(info["symbol"])
            if not address:
                raise RuntimeError(f"kernel {name}: symbol not found in its object code")
            argtypes = [ctypes.c_void_p if c == "p" else ctypes.c_int64 for c in ENTRY_ARGS[name]]
            functions[name] = ctypes.CFUNCTYPE(None, *argtypes)(address)
            engines.append(engine)
        kernels = cls(functions, engines)
        kernels.warm_up()
        return kernels

    def warm_up(self) -> None:
        """Call every kernel once and check its answers.

        Raises:
            RuntimeError: A kernel gave a wrong answer.
        """
        _exercise(self)

    def scan_frames(
        self,
        buf: np.ndarray,
        start: int,
        length: int,
        final: bool,
        out_start: np.ndarray,
        out_end: np.ndarray,
        out_size: np.ndarray,
        out_kind: np.ndarray,
    ) -> tuple[int, int, int]:
        """Walk zstd frame headers; see :func:`herocollector.decode.kernel.scan_frames`.

        Raises:
            TypeError: An array is not contiguous, 1-d, of the kernel's dtype (or writable
                where the kernel writes).
        """
        result = np.zeros(3, dtype=np.int64)
        self._functions["scan_frames"](
            _pointer(buf, np.uint8), buf.size, int(start), int(length), 1 if final else 0,
            _pointer(out_start, np.int64, True), out_start.size, _pointer(out_end, np.int64, True), out_end.size,
            _pointer(out_size, np.int64, True), out_size.size, _pointer(out_kind, np.uint8, True), out_kind.size,
            result.ctypes.data,
        )  # fmt: skip
        return int(result[0]), int(result[1]), int(result[2])

    def decode_records(
        self,
        data: np.ndarray,
        pos: int,
        unit_ends: np.ndarray,
        unit: int,
        open_last: bool,
        table: np.ndarray,
        big_ids: np.ndarray,
        big_slots: np.ndarray,
        selected: np.ndarray,
        epoch_scales: np.ndarray,
        value_scales: np.ndarray,
        last_ticks: np.ndarray,
        scaled: int,
        max_values: int,
        out_sid: np.ndarray,
        out_slot: np.ndarray,
        out_epoch: np.ndarray,
        out_tick: np.ndarray,
        out_offsets: np.ndarray,
        out_idx: np.ndarray,
        out_val: np.ndarray,
        out_q: np.ndarray,
    ) -> tuple[int, int, int, int, int, int]:
        """Decode records in one pass; see :func:`herocollector.decode.kernel.decode_records`.

        Raises:
            TypeError: An array is not contiguous, 1-d, of the kernel's dtype (or writable
                where the kernel writes), or ``out_tick``/``out_q`` are not ``out_epoch``/``out_val``
                viewed as ``int64``.
        """
        # The int64 views must be the float64 arrays themselves: the entry point takes one of each.
        if _address(out_tick) != _address(out_epoch) or out_tick.size != out_epoch.size:
            raise TypeError("out_tick must be out_epoch viewed as int64")
        if _address(out_q) != _address(out_val) or out_q.size != out_val.size:
            raise TypeError("out_q must be out_val viewed as int64")
        result = np.zeros(6, dtype=np.int64)
        self._functions["decode_records"](
            _pointer(data, np.uint8), data.size, int(pos), _pointer(unit_ends, np.int64), unit_ends.size, int(unit),
            1 if open_last else 0, _pointer(table, np.int32), table.size, _pointer(big_ids, np.uint64), big_ids.size,
            _pointer(big_slots, np.int32), big_slots.size, _pointer(selected, np.uint8), selected.size,
            _pointer(epoch_scales, np.float64), epoch_scales.size,
            _pointer(value_scales, np.float64), value_scales.size,
            _pointer(last_ticks, np.int64, True), last_ticks.size, int(scaled), int(max_values),
            _pointer(out_sid, np.uint32, True), out_sid.size, _pointer(out_slot, np.int32, True), out_slot.size,
            _pointer(out_epoch, np.float64, True), out_epoch.size,
            _pointer(out_offsets, np.int32, True), out_offsets.size,
            _pointer(out_idx, np.int64, True), out_idx.size, _pointer(out_val, np.float64, True), out_val.size,
            result.ctypes.data,
        )  # fmt: skip
        status, stop, unit, nrec, nval, detail = (int(x) for x in result)
        return status, stop, unit, nrec, nval, detail & 0xFFFFFFFFFFFFFFFF  # the detail is a uint64

    def varint_damage(self, data: np.ndarray, start: int, end: int, run: int) -> tuple[int, bool]:
        """Check varint lengths (diagnosis); see :func:`herocollector.decode.kernel.varint_damage`.

        Raises:
            TypeError: ``data`` is not a contiguous 1-d ``uint8`` array.
        """
        result = np.zeros(2, dtype=np.int64)
        self._functions["varint_damage"](
            _pointer(data, np.uint8), data.size, int(start), int(end), int(run), result.ctypes.data
        )
        return int(result[0]), bool(result[1])
