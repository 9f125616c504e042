"""Build, cache and load neuromorph's optional C kernels (ctypes), one builder for all of them.

A kernel is one C source file compiled into a shared library with the C compiler of the Python build (``$CC``
overrides it; Debian's ``gcc``) into ``$NEUROMORPH_CACHE/kernels`` (default ``~/.cache/neuromorph/kernels``),
named by a hash of the source, the compiler, the flags and the machine (its architecture; with ``-march=native``
also the processor's model and feature flags, so a home directory shared by machines of several kinds keeps one
library per kind and never loads code built for another processor), written atomically. :class:`Kernel` builds it
on first use; without a compiler (or with ``NEUROMORPH_KERNELS=0``) its user runs a torch path, with a one-time
warning naming the reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["Kernel", "compiler", "cache_dir", "build"]


def compiler() -> list[str]:
    """The C compiler: ``$CC``, else the one Python was built with, else ``cc``."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)[:1]


def cache_dir() -> Path:
    root = os.environ.get("NEUROMORPH_CACHE")
    return Path(root) / "kernels" if root else Path.home() / ".cache" / "neuromorph" / "kernels"


def _processor() -> str:
    """This processor's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        found = {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip() and found:  # the end of the first processor's block
                    break
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features", "CPU part") and key not in found:
                    found[key] = value.strip()
        if found:
            return repr(sorted(found.items()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(src: Path, stem: str, flags: Sequence[str]) -> ctypes.CDLL:
    """Compile ``src`` with ``flags`` (once: the library is cached, keyed by source, compiler, flags and machine)
    and load it. Raises ``RuntimeError`` (or ``OSError``) when the compiler fails or is missing."""
    code = src.read_bytes()
    cc = compiler()
    # the machine's architecture too: a home directory shared by machines of several kinds keeps one per kind
    key = " ".join([*cc, *flags, platform.machine(), platform.system()])
    if any("native" in f for f in flags):
        key += " " + _processor()
    tag = hashlib.sha256(code + key.encode()).hexdigest()[:16]
    out_dir = cache_dir()
    lib = out_dir / f"{stem}_{tag}.so"
    if not lib.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        try:
            r = subprocess.run([*cc, *flags, "-o", tmp, str(src), "-lm"], capture_output=True, text=True,
                               timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"{cc[0]} failed: {r.stderr.strip()[:500]}")
            os.replace(tmp, lib)  # atomic: a concurrent build writes the same bytes
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(lib))


class Kernel:
    """One optional compiled library, built and loaded on first use.

    ``make`` builds and declares it (typically :func:`build` then the functions' ``argtypes``); ``what`` names it
    in the warning and ``fallback`` says what runs instead. The state lives in the dict ``state``
    (``{"lib", "tried", "reason"}``), which the owning module keeps (tests replace it to retry a build).
    """

    def __init__(self, make: Callable[[], ctypes.CDLL], what: str, fallback: str,
                 state: Callable[[], dict]) -> None:
        self.make, self.what, self.fallback, self._state = make, what, fallback, state
        self._lock = threading.Lock()

    def load(self) -> ctypes.CDLL | None:
        """The library, or ``None`` (the reason in :meth:`status`)."""
        st = self._state()
        if st["tried"]:
            return st["lib"]
        with self._lock:
            if not st["tried"]:
                if os.environ.get("NEUROMORPH_KERNELS", "1") == "0":
                    st["reason"] = "disabled by NEUROMORPH_KERNELS=0"
                else:
                    try:
                        st["lib"] = self.make()
                    except Exception as e:  # no compiler, no write access, a failed build: the torch path runs
                        st["reason"] = f"{type(e).__name__}: {e}"
                        warnings.warn(f"neuromorph: {self.what} is not available ({st['reason']}); "
                                      f"{self.fallback}", RuntimeWarning, stacklevel=4)
                st["tried"] = True
        return st["lib"]

    def require(self) -> ctypes.CDLL:
        """The library; raises ``RuntimeError`` naming the reason when it is not available."""
        lib = self.load()
        if lib is None:
            raise RuntimeError(f"{self.what} is not available: {self._state()['reason']}")
        return lib

    def available(self) -> bool:
        return self.load() is not None

    def status(self) -> str:
        """``"compiled"`` or why not (the torch path then runs)."""
        return "compiled" if self.available() else f"torch ({self._state()['reason']})"
