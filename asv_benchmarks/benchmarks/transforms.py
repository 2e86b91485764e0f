"""asv benchmarks: circfft's rdfft/irdfft (in place) against the usual real FFTs.

``Circfft`` times ``circfft.rdfft(x, norm="ortho", out=x)`` / ``irdfft`` for each built-in
backend; ``Peers`` times ``scipy.fft``, ``numpy.fft``, ``scipy.fftpack`` (``overwrite_x=True``,
no ``norm``) and ``torch.fft`` on the same data, all with ``norm="ortho"`` where they take it,
one worker (``torch.set_num_threads(1)``, ``workers=1``).  ``Parallel`` times the methods that
take a worker count (circfft's numba backend, ``scipy.fft``, ``torch.fft``) with ``workers``
of ``WORKERS`` (2); scipy.fft is the peer the others are read against, as in
``python -m circfft bench``.  Each call transforms ``ELEMENTS // n`` rows of length ``n``
(``ELEMENTS`` = 2**20, or ``$CIRCFFT_ASV_ELEMENTS``), for the lengths of ``bench``'s full run:
powers of two from 64 to 2**20 and 3*2**k, 5*2**k and 1000.

Parameter order: ``Circfft`` and ``Peers`` are ``(method, n, dtype, direction)``;
``Parallel`` is ``(method, n, workers, dtype, direction)``.  The Makefile's smoke selection
(``ASV_SMOKE``, matching ``, 64, 'float32'``) therefore runs every one-worker method once per
direction at the smallest size, and no ``Parallel`` case: ``make asv-check`` runs no longer
for the added cases.

``number = 1`` and a ``setup`` that refills the input buffer from a pristine copy make asv
re-run setup before every timed call, so in-place transforms never see their own output
(repeated unnormalised transforms would overflow or decay into denormals).  ``setup`` also
warms up once per process (numba compiles or loads its cache there, hence the long
``timeout``) and raises ``NotImplementedError`` (asv: skipped) for what is not installed.

``peakmem_`` reports asv's peak RSS of the benchmark process, buffers included; compare the
methods with each other.  For the extra memory of a single call, see ``python -m circfft bench``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

try:
    import circfft
except ImportError:  # asv --python=same on a checkout where circfft is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import circfft

ELEMENTS = int(os.environ.get("CIRCFFT_ASV_ELEMENTS", 1 << 20))
SIZES = sorted([4 ** k for k in range(3, 9)] + [1 << k for k in (17, 18, 19, 20)]
               + [96, 192, 320, 640, 1000, 3072, 5120])
DTYPES = ["float32", "float64"]
DIRECTIONS = ["forward", "inverse"]
BACKENDS = ["numba", "numpy"]
PEERS = ["scipy.fft", "numpy.fft", "scipy.fftpack", "torch.fft"]
#: Methods with a worker count, timed with each of WORKERS (one worker: Circfft and Peers).
PARALLEL = ["circfft:numba", "scipy.fft", "torch.fft"]
WORKERS = [2]
NORM = "ortho"

_sources: dict = {}
_calls: dict = {}
_warm: set = set()


def _source(n: int, dtype: str, kind: str) -> np.ndarray:
    """Pristine input, shared by every method: real rows, or their complex half spectra."""
    key = (n, dtype, kind)
    if key not in _sources:
        rows = max(1, ELEMENTS // n)
        real = np.random.default_rng(n).standard_normal((rows, n)).astype(dtype)
        if kind == "complex":
            real = np.fft.rfft(real).astype(np.result_type(dtype, np.complex64))
        _sources[key] = real
    return _sources[key]


def _circfft_call(backend: str, n: int, dtype: str, direction: str, workers: int = 1):
    try:
        circfft.backends.get_backend(backend)       # loads only this backend
    except ValueError as exc:                     # unknown or unavailable here
        raise NotImplementedError(str(exc)) from exc
    src = _source(n, dtype, "real")
    work = src.copy()
    fn = circfft.rdfft if direction == "forward" else circfft.irdfft
    return src, work, lambda: fn(work, norm=NORM, out=work, workers=workers, backend=backend)


def _peer_call(peer: str, n: int, dtype: str, direction: str, workers: int = 1):
    module = peer.partition(".")[0]
    if importlib.util.find_spec(module) is None:
        raise NotImplementedError(f"{module} is not installed")
    forward = direction == "forward"
    if peer == "scipy.fftpack":
        import scipy.fftpack as fftpack

        src = _source(n, dtype, "real")
        work = src.copy()
        fn = fftpack.rfft if forward else fftpack.irfft
        return src, work, lambda: fn(work, overwrite_x=True)
    src = _source(n, dtype, "real" if forward else "complex")
    work = src.copy()
    if peer == "scipy.fft":
        import scipy.fft

        if forward:
            return src, work, lambda: scipy.fft.rfft(work, norm=NORM, workers=workers)
        return src, work, lambda: scipy.fft.irfft(work, n, norm=NORM, workers=workers)
    if peer == "numpy.fft":
        if forward:
            return src, work, lambda: np.fft.rfft(work, norm=NORM)
        return src, work, lambda: np.fft.irfft(work, n, norm=NORM)
    if peer == "torch.fft":
        try:
            import torch
        except Exception as exc:  # installed but broken
            raise NotImplementedError(f"torch does not import: {exc}") from exc
        t = torch.from_numpy(work)          # shares memory with work: refills reach it
        # set in every (untimed) setup: benchmarks sharing a process may have changed it
        threads = lambda: torch.set_num_threads(workers)   # noqa: E731
        if forward:
            return src, work, lambda: torch.fft.rfft(t, norm=NORM), threads
        return src, work, lambda: torch.fft.irfft(t, n, norm=NORM), threads
    raise ValueError(peer)


def _parallel_call(method: str, n: int, workers: int, dtype: str, direction: str):
    if method.startswith("circfft:"):
        return _circfft_call(method.partition(":")[2], n, dtype, direction, workers)
    return _peer_call(method, n, dtype, direction, workers)


class _Transform:
    param_names = ["method", "n", "dtype", "direction"]
    number = 1          # setup (which refills the input) runs before every timed call
    timeout = 600.0     # the first setup may compile numba kernels
    _make = None

    def setup(self, *params):
        key = (type(self).__name__, *params)
        if key not in _calls:
            _calls[key] = type(self)._make(*params)
        self.src, self.work, self.call, *before = _calls[key]
        for prepare in before:
            prepare()
        if key not in _warm:
            np.copyto(self.work, self.src)
            self.call()
            _warm.add(key)
        np.copyto(self.work, self.src)

    def time_transform(self, *params):
        self.call()

    def peakmem_transform(self, *params):
        self.call()


class Circfft(_Transform):
    """``circfft.rdfft(x, out=x)`` / ``circfft.irdfft(x, out=x)``, one worker."""

    params = [BACKENDS, SIZES, DTYPES, DIRECTIONS]
    _make = staticmethod(_circfft_call)


class Peers(_Transform):
    """scipy.fft, numpy.fft, scipy.fftpack (overwrite_x=True), torch.fft; one thread."""

    params = [PEERS, SIZES, DTYPES, DIRECTIONS]
    _make = staticmethod(_peer_call)


class Parallel(_Transform):
    """circfft (numba), scipy.fft and torch.fft with ``workers`` threads (scipy.fft: the peer)."""

    param_names = ["method", "n", "workers", "dtype", "direction"]
    params = [PARALLEL, SIZES, WORKERS, DTYPES, DIRECTIONS]
    _make = staticmethod(_parallel_call)
