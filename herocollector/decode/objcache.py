"""The object-code cache of the compiled kernels: its key, its directories, its checks, the build.

:mod:`herocollector.decode.native` loads the kernels' machine code from here, and on a miss
builds it with numba (:func:`build`) and stores it (:func:`store`); see that module for the
order of the cache directories and what makes an entry trusted. Kept apart from the loader so
that neither module grows past the size the layout allows.

This module must not import numba (nor :mod:`herocollector.decode.kernel`) at import time.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

from herocollector.decode.status import ENTRY_ARGS

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the entry points or the cache layout change
_SOURCES = ("kernel.py", "status.py", "native.py", "objcache.py")
"""The files whose text the machine code depends on (the cache key hashes them)."""


def cache_key(llvm: Any) -> str:
    """What the machine code depends on: kernel source, tool versions, CPU, platform."""
    import llvmlite  # type: ignore[import-untyped]  # llvmlite ships no type information

    # numba's version without importing numba (or importlib.metadata, slower than a decode).
    numba_spec = importlib.util.find_spec("numba")
    numba_version = b""
    if numba_spec is not None and numba_spec.origin:
        numba_version = (Path(numba_spec.origin).parent / "_version.py").read_bytes()
    digest = hashlib.sha256()
    for part in (
        str(FORMAT),
        *((Path(__file__).parent / name).read_bytes().hex() for name in _SOURCES),
        numba_version.hex(),
        llvmlite.__version__,
        llvm.get_process_triple(),
        llvm.get_host_cpu_name(),
        llvm.get_host_cpu_features().flatten(),
        sys.platform,
        f"{sys.version_info[0]}.{sys.version_info[1]}",
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def cache_dirs() -> list[Path]:
    """Candidate cache directories, in order (see the module docstring).

    ``$NUMBA_CACHE_DIR``, when set, is the only one, as it is for numba's own cache.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return [Path(os.environ["NUMBA_CACHE_DIR"]) / "herocollector"]
    dirs = [Path(__file__).parent / "__pycache__"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(Path(base) / "herocollector" / "numba")
    import tempfile

    user = os.getuid() if hasattr(os, "getuid") else "user"
    dirs.append(Path(tempfile.gettempdir()) / f"herocollector-numba-{user}")
    return dirs


def _trusted(path: Path) -> bool:
    """A file (or directory) we may load code from: ours or root's, not writable by others."""
    try:
        info = path.stat()
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or info.st_uid in (os.getuid(), 0)
    return owner_ok and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_entry(directory: Path, key: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The cached kernels for ``key`` in ``directory``, if present, trusted and intact."""
    meta_path = directory / f"herocollector-kernels-{key}.json"
    if not meta_path.is_file() or not _trusted(directory) or not _trusted(meta_path):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        objects = {}
        for name, info in meta["kernels"].items():
            path = directory / info["file"]
            if not _trusted(path):
                return None
            blob = path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != info["sha256"]:
                return None
            objects[name] = blob
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("key") != key or set(objects) != set(ENTRY_ARGS):
        return None
    return meta, objects


def store(key: str, meta: dict[str, Any], objects: dict[str, bytes]) -> None:
    """Write the kernels to the first cache directory that takes them (atomically per file)."""
    for directory in cache_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not _trusted(directory):
                continue
            for name, blob in objects.items():
                _write_atomically(directory / meta["kernels"][name]["file"], blob)
            _write_atomically(directory / f"herocollector-kernels-{key}.json", json.dumps(meta, indent=1).encode())
            return
        except OSError:
            continue
    log.warning("no writable cache directory for the compiled kernels; they are built in every process")


def _write_atomically(path: Path, blob: bytes) -> None:
    import tempfile

    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def build(llvm: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Compile the kernels' C entry points with numba and emit their object code."""
    from herocollector.decode import kernel

    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(
        cpu=llvm.get_host_cpu_name(),
        features=llvm.get_host_cpu_features().flatten(),
        opt=3,
        reloc="default",
        codemodel="jitdefault",
    )
    meta: dict[str, Any] = {"format": FORMAT, "key": cache_key(llvm), "kernels": {}, "externals": {}}
    objects: dict[str, bytes] = {}
    for name, entry in kernel.entry_points().items():
        module = llvm.parse_assembly(entry.inspect_llvm())
        module.verify()
        for function in module.functions:
            if function.is_declaration and not function.name.startswith("llvm."):
                meta["externals"][function.name] = "function"
        for variable in module.global_variables:
            if variable.is_declaration:
                meta["externals"][variable.name] = "data"
        blob = machine.emit_object(module)
        objects[name] = blob
        meta["kernels"][name] = {
            "symbol": entry.native_name,
            "file": f"herocollector-kernels-{meta['key']}-{name}.o",
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
    unknown = [n for n in meta["externals"] if not _known_external(n)]
    if unknown:
        raise RuntimeError(f"the kernels' object code needs unexpected symbols {unknown}")
    return meta, objects


# Symbols numba's generic error handling refers to. The kernels raise no exception (no
# raise, no bounds check, no division), so these are never called; they still need an
# address to link. Python's own come from the interpreter; numba's internal ones (not
# exported by its extension modules) get a stub that stops the process loudly, as calling
# one would mean the code is not what it was checked to be.
_NUMBA_INTERNAL = ("numba_", "NRT_")
_PYTHON = ("Py", "_Py")


def _known_external(name: str) -> bool:
    return name.startswith(_NUMBA_INTERNAL + _PYTHON) or name in _LIBC


_LIBC = frozenset({"memset", "memcpy", "memmove", "memcmp"})


@ctypes.CFUNCTYPE(None)  # type: ignore[untyped-decorator]  # ctypes' stubs leave it untyped
def _never_called() -> None:  # pragma: no cover - by construction
    os.write(2, b"herocollector: a compiled kernel reached numba's exception path; aborting\n")
    os.abort()


def provide_symbols(llvm: Any, externals: dict[str, str]) -> None:
    """Give the JIT linker an address for every external symbol not already known to it.

    Symbols already registered (e.g. by numba, when it is loaded) are left alone: llvmlite's
    symbol table is process-wide.
    """
    stub = ctypes.cast(_never_called, ctypes.c_void_p).value
    for name, kind in externals.items():
        if llvm.address_of_symbol(name):
            continue
        address = None
        if name.startswith(_PYTHON):
            if kind == "data":
                address = ctypes.addressof(ctypes.c_void_p.in_dll(ctypes.pythonapi, name))
            else:
                address = ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
        elif name.startswith(_NUMBA_INTERNAL):
            address = stub
        if address:
            llvm.add_symbol(name, address)
