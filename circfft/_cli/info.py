"""``python -m circfft info`` and the environment probes the benchmarks share with it.

``info`` reports the version, the Python/numpy in use, every backend with its state (and why an
unavailable one cannot load), the threads at hand and the versions of optional peers.  Nothing
heavy (numba, scipy, torch) is imported at module level.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys

__all__ = ["info", "dist_version", "importable"]


def dist_version(name: str) -> str | None:
    """Installed version of distribution ``name`` without importing it (None if absent)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def importable(module: str) -> bool:
    """Whether ``module`` can be found for import (it is not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _numba_threads() -> list[tuple[str, str]]:
    """Numba's thread count and threading layer (imports numba: only called by ``info``)."""
    try:
        import numba
    except ImportError as exc:
        return [("numba", f"not importable ({exc})")]
    rows = [("numba NUMBA_NUM_THREADS", str(numba.config.NUMBA_NUM_THREADS))]
    try:
        rows.append(("numba get_num_threads()", str(numba.get_num_threads())))
    except Exception:  # pragma: no cover - depends on numba's state
        pass
    configured = str(numba.config.THREADING_LAYER)
    try:
        layer = numba.threading_layer()
    except ValueError:
        # Not initialised yet: start the thread pool (no compilation involved) and ask again.
        try:
            from numba.np.ufunc import parallel

            parallel._launch_threads()
            layer = numba.threading_layer()
        except Exception as exc:  # pragma: no cover - internal API may move
            layer = f"not initialised ({type(exc).__name__}: {exc})"
    rows.append(("numba threading layer", f"{layer} (NUMBA_THREADING_LAYER={configured})"))
    return rows


def info(out=None) -> int:
    """Print version, backends and threads to ``out`` (default stdout); return the exit status."""
    import numpy as np

    from circfft import __version__
    from circfft.backends import available

    out = out or sys.stdout

    def line(key, value, indent=0):
        print(f"{' ' * indent}{key:<{28 - indent}} {value}", file=out)

    print(f"circfft {__version__}", file=out)
    line("python", f"{platform.python_version()} ({sys.executable})")
    line("platform", platform.platform())
    line("numpy", np.__version__)
    for dist in ("scipy", "numba", "torch", "cupy-cuda12x", "tqdm", "matplotlib", "asv"):
        version = dist_version(dist)
        line(dist, version if version else "not installed")

    print("backends:", file=out)
    statuses = available()
    width = max((len(name) for name in statuses), default=0)
    for name, st in statuses.items():
        state = "available" if st.available else "unavailable"
        family = st.family or "-"
        reason = f"  ({st.reason})" if st.reason else ""
        print(f"  {name:<{width}}  {family:<6} {state}{reason}", file=out)

    print("threads:", file=out)
    line("os.cpu_count()", os.cpu_count(), 2)
    if hasattr(os, "sched_getaffinity"):
        line("usable CPUs (affinity)", len(os.sched_getaffinity(0)), 2)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS"):
        if var in os.environ:
            line(f"${var}", os.environ[var], 2)
    for key, value in _numba_threads():
        line(key, value, 2)
    return 0
