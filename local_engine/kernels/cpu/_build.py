"""Compiles the kernels' C sources once per machine and source version into a cached shared library.

The library lands in ``$SWITCHYARD_CACHE_DIR/cpu_kernels`` (default ``~/.cache/switchyard``), named
by a hash of the source, the compiler command and the CPU's feature flags, so an edit, another
compiler or a machine with other vector units gets its own build. Written to a temporary name and
renamed, so parallel processes never load a half-written file. Like Triton's launcher stubs, this
needs a C compiler at run time (``$CC``, else ``cc``/``gcc``); without one the engine keeps the
torch path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# -march=native: the library is built on, and only ever loaded by, this machine (the cache key
# includes its CPU flags). No OpenMP runtime: the kernels bring their own pool (pool.h);
# -fopenmp-simd only honours the `omp simd` vectorisation hints.
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-pthread", "-fPIC", "-shared", "-std=c11"]


def _sources() -> list[Path]:
    return sorted(HERE.glob("*.c"))


class BuildError(RuntimeError):
    """No compiler, or the compiler rejected the source."""


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise BuildError("no C compiler found (set CC)")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    root = os.environ.get("SWITCHYARD_CACHE_DIR") or os.path.join(Path.home(), ".cache", "switchyard")
    return Path(root) / "cpu_kernels"


def build(extra_flags: tuple[str, ...] = ()) -> Path:
    """The path of the compiled library, building it if this machine has no current build.

    ``extra_flags`` build a variant (the tests use ``-mno-avx512bf16`` to exercise the code path of
    CPUs without bf16 dot products on one that has them)."""
    compiler = _compiler()
    sources = _sources()
    text = b"".join(path.name.encode() + path.read_bytes() for path in sorted([*sources, *HERE.glob("*.h")]))
    flags = [*FLAGS, *extra_flags]
    key = hashlib.sha256(text + " ".join([compiler, *flags]).encode() + _cpu_flags().encode())
    target = cache_dir() / f"sy_cpu_ops-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, *flags, *map(str, sources), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise BuildError(f"{compiler} failed on the CPU kernels:\n{proc.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
