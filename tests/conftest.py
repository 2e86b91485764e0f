"""Shared pytest configuration for the circfft test suite.

- ``tests/`` is put on ``sys.path`` so every test module can ``from oracles import ...``.
- Fixtures: ``backend`` (parametrised over the CPU backends "numpy" and "numba"), ``dtype``
  (float32, float64), ``rng`` (a seeded ``numpy.random.Generator``).
- Markers (declared in pyproject.toml): ``slow``; ``gpu`` tests are skipped unless a CUDA
  device is visible; ``cuda_compile`` tests are skipped unless ``nvcc`` is found.
- Under ``CI=true`` nothing CI installs is skipped: `require` (modules) and `require_tool`
  (nvcc, g++ >= 12, /proc/self/clear_refs) fail instead.  Only GPU tests skip there.
- Hypothesis profiles: "default" (no deadline: numba's first call compiles) and "ci"/"thorough"
  selected with ``HYPOTHESIS_PROFILE``.
"""
from __future__ import annotations

import functools
import os
import shutil
import zlib
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "default", deadline=None, max_examples=60,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture])
    settings.register_profile(
        "thorough", deadline=None, max_examples=500,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass

CPU_BACKENDS = ("numpy", "numba")
FLOAT_DTYPES = (np.float32, np.float64)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    """Name of a CPU backend ("numpy" or "numba"); numba is skipped when not installed, and
    fails under ``CI=true`` (see `require`)."""
    if request.param == "numba":
        require("numba")
    return request.param


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A Generator seeded from the test's node id: reproducible and different per test."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@functools.lru_cache(maxsize=1)
def _cuda_device_reason() -> str | None:
    """None when a CUDA device is usable, else why not (checked lazily, once)."""
    if os.environ.get("CIRCFFT_NO_GPU"):
        return "CIRCFFT_NO_GPU is set"
    if "torch" in sys.modules or _importable("torch"):
        try:
            import torch

            if torch.cuda.is_available():
                return None
        except Exception as exc:  # pragma: no cover - environment dependent
            return f"torch cannot use CUDA: {exc}"
    if _importable("cupy"):
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return None
        except Exception as exc:  # pragma: no cover - environment dependent
            return f"cupy cannot use CUDA: {exc}"
    return "no CUDA device visible (neither torch nor cupy reports one)"


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root) / "bin" / "nvcc")
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items:
        reason = _cuda_device_reason()
        if reason is not None:
            skip = pytest.mark.skip(reason=reason)
            for item in gpu_items:
                item.add_marker(skip)
    # cuda_compile tests: see pytest_runtest_setup (skipped without nvcc, failed under CI=true)


def require(module_name: str):
    """Import and return ``module_name``; if it is missing, skip the calling test (or module).

    Under ``CI=true`` a missing module fails instead of skipping: CI installs every package the
    tests import this way, so a skip there would hide a broken environment.
    """
    import importlib

    if os.environ.get("CI") != "true":
        return pytest.importorskip(module_name)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"CI=true: {module_name} is installed by CI but does not import "
                          f"({exc})") from exc


# ---------------------------------------------------------------------------------------------
# Tools that CI installs: skip without them, fail under CI=true
# ---------------------------------------------------------------------------------------------
def running_in_ci() -> bool:
    """True under ``CI=true``, where everything CI installs must be usable."""
    return os.environ.get("CI") == "true"


def require_tool(reason: str | None, what: str) -> None:
    """Skip the calling test (fixture, module) when ``reason`` is not None, i.e. ``what`` is
    unusable; under ``CI=true`` fail with ``reason`` instead (CI installs ``what``)."""
    if reason is None:
        return
    if running_in_ci():
        pytest.fail(f"CI=true: {what} is required (CI installs it) but unusable: {reason}",
                    pytrace=False)
    pytest.skip(f"{what}: {reason}", allow_module_level=True)


def nvcc_unavailable_reason() -> str | None:
    """None when nvcc is found (PATH, CUDA_HOME, CUDA_PATH, /usr/local/cuda), else why not."""
    return None if _nvcc() else "nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)"


def gxx_unavailable() -> str | None:
    """None when the CUDA emulation's g++ >= 12 is usable, else why not."""
    from cuda_emulation.emulator import gxx_unavailable_reason

    return gxx_unavailable_reason()


def clear_refs_unavailable_reason() -> str | None:
    """None when this process may reset its RSS high-water mark (/proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        return f"cannot reset the RSS high-water mark: {exc}"
    return None


@pytest.fixture(scope="session")
def nvcc() -> str:
    """Path of nvcc; skips (fails under CI=true) without it."""
    require_tool(nvcc_unavailable_reason(), "nvcc")
    return _nvcc()


@pytest.fixture(scope="session")
def gxx() -> None:
    """g++ >= 12 for the CUDA emulation; skips (fails under CI=true) without it.  Modules use
    it as ``pytest.mark.usefixtures("gxx")``: it runs before their session fixtures build."""
    require_tool(gxx_unavailable(), "g++ >= 12 (CUDA emulation)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda_compile"):
        require_tool(nvcc_unavailable_reason(), "nvcc")
