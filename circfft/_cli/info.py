"""``python -m circfft info`` and the environment probes the benchmarks share with it.

``info`` reports the version, the Python/numpy in use, every backend with its state (and why an
unavailable one cannot load), which kernels each kind of array would run (and why not faster
ones), the threads at hand and the versions of optional peers.  Nothing heavy (numba, scipy,
torch, cupy) is imported at module level; the kernel routes are read from public facts only
(:func:`importlib.util.find_spec`, ``torch.cuda.is_available()``,
:func:`circfft.backends.available`, :func:`circfft.get_config`).
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys

__all__ = ["info", "dist_version", "importable", "kernel_facts", "kernel_routes",
           "cuda_tensor_route", "cupy_wheel_for", "CUPY_DISTS"]

#: The CuPy wheels circfft's extras install, by CUDA major version (extra ``cuda12``/``cuda13``).
CUPY_DISTS = {"12": "cupy-cuda12x", "13": "cupy-cuda13x"}


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


def cupy_wheel_for(cuda_version: str | None) -> str:
    """The CuPy wheel and circfft extra matching CUDA ``cuda_version`` (torch.version.cuda)."""
    major = (cuda_version or "").partition(".")[0]
    if major in CUPY_DISTS:
        return f"{CUPY_DISTS[major]} (pip install 'circfft[cuda{major}]')"
    return (f"the cupy build for CUDA {cuda_version}" if cuda_version else
            "the cupy wheel of your CUDA version (nvidia-smi; circfft[cuda12] or [cuda13])")


def kernel_facts() -> dict:
    """What decides which kernels run, from public, importable facts.

    Keys: ``statuses`` (:func:`circfft.backends.available`), ``torch_fft`` (the
    :func:`circfft.config` setting), ``torch`` (torch's version, None if not installed),
    ``torch_cuda`` (``torch.version.cuda``), ``cuda_device`` (``torch.cuda.is_available()``),
    ``cupy_importable`` (``find_spec("cupy")``) and ``cupy_dists`` (installed CuPy wheels).
    """
    from circfft import get_config
    from circfft.backends import available

    facts = dict(statuses=available(), torch_fft=bool(get_config().torch_fft), torch=None,
                 torch_cuda=None, cuda_device=False, cupy_importable=importable("cupy"),
                 cupy_dists={d: v for d in (*CUPY_DISTS.values(), "cupy")
                             if (v := dist_version(d))})
    if importable("torch"):
        import torch

        facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                     cuda_device=bool(torch.cuda.is_available()))
    return facts


def kernel_routes(facts: dict) -> list[tuple[str, str]]:
    """``(kind of array, what runs it and why)`` for numpy arrays, torch CPU and CUDA tensors
    and cupy arrays, from :func:`kernel_facts` (or any dict with its keys)."""
    statuses = facts["statuses"]

    def reason(name):
        st = statuses.get(name)
        return "not registered" if st is None else (st.reason or "unavailable")

    numba_ok = statuses.get("numba") is not None and statuses["numba"].available
    cpu = ("numba kernels" if numba_ok else
           f"numpy reference kernels (numba unavailable: {reason('numba')})")
    routes = [("numpy arrays", cpu)]
    cupy_ok = statuses.get("cupy") is not None and statuses["cupy"].available
    wheel = cupy_wheel_for(facts.get("torch_cuda"))
    if facts.get("torch") is None:
        routes.append(("torch tensors", "torch is not installed"))
    elif facts.get("torch_fft"):
        routes.append(("torch tensors", "torch.fft (circfft.config(torch_fft=True) is set)"))
    else:
        routes.append(("torch CPU tensors", f"{cpu}, on zero-copy numpy views"))
        why = []
        if not facts.get("torch_cuda"):
            why.append(f"torch {facts['torch']} is a CPU build (torch.version.cuda is None)")
        elif not facts.get("cuda_device"):
            why.append("no CUDA device (torch.cuda.is_available() is False)")
        if not facts.get("cupy_importable"):
            why.append(f"cupy, which compiles the kernels, is not installed: {wheel}")
        elif not cupy_ok:
            why.append(f"cupy does not load ({reason('cupy')}); torch's CUDA matches {wheel}")
        routes.append(("torch CUDA tensors",
                       f"torch.fft, not the CUDA kernels: {'; '.join(why)}" if why else
                       "circfft CUDA kernels (compiled by cupy, on torch's current stream)"))
        mismatch = _wheel_mismatch(facts)
        if mismatch:
            routes.append(("", mismatch))
    routes.append(("cupy arrays", "circfft CUDA kernels" if cupy_ok else
                   f"unavailable: {reason('cupy')}"))
    return routes


def cuda_tensor_route() -> str:
    """What CUDA torch tensors run here, with the installed CuPy wheels (for report headers)."""
    facts = kernel_facts()
    routes = dict(kernel_routes(facts))
    route = routes.get("torch CUDA tensors", routes.get("torch tensors", "?"))
    wheels = ", ".join(f"{d} {v}" for d, v in facts["cupy_dists"].items()) or "no cupy"
    return f"{route} ({wheels})"


def _wheel_mismatch(facts) -> str | None:
    """A note when the installed CuPy wheel is for another CUDA major version than torch."""
    major = (facts.get("torch_cuda") or "").partition(".")[0]
    wanted = CUPY_DISTS.get(major)
    others = [d for d in facts.get("cupy_dists", {}) if d in CUPY_DISTS.values() and d != wanted]
    if wanted and others and wanted not in facts["cupy_dists"]:
        return (f"note: {', '.join(others)} installed, but torch is built for CUDA "
                f"{facts['torch_cuda']}: {cupy_wheel_for(facts['torch_cuda'])} matches it")
    return None


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
    for dist in ("scipy", "numba", "torch", *CUPY_DISTS.values(), "tqdm", "matplotlib", "asv"):
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

    print("kernels (what each kind of array runs):", file=out)
    for kind, route in kernel_routes(kernel_facts()):
        line(kind, route, 2)

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
