"""asv benchmarks: circfft's rdfft/irdfft (in place) against the usual real FFTs.

``Circfft`` times ``circfft.rdfft(x, out=x)`` / ``irdfft(x, out=x)`` for each built-in backend;
``Peers`` times ``scipy.fft``, ``numpy.fft``, ``scipy.fftpack`` (``overwrite_x=True``) and
``torch.fft`` on the same data (``torch.set_num_threads(1)``, ``workers=1`` everywhere, so the
figures compare one thread with one thread).  Each call transforms ``ELEMENTS // n`` rows of
length ``n`` (``ELEMENTS`` = 2**20, or ``$CIRCFFT_ASV_ELEMENTS``).

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
SIZES = [64, 1024, 65536]
DTYPES = ["float32", "float64"]
DIRECTIONS = ["forward", "inverse"]
BACKENDS = ["numba", "numpy"]
PEERS = ["scipy.fft", "numpy.fft", "scipy.fftpack", "torch.fft"]

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


def _circfft_call(backend: str, n: int, dtype: str, direction: str):
    try:
        circfft.backends.get_backend(backend)       # loads only this backend
    except ValueError as exc:                     # unknown or unavailable here
        raise NotImplementedError(str(exc)) from exc
    src = _source(n, dtype, "real")
    work = src.copy()
    fn = circfft.rdfft if direction == "forward" else circfft.irdfft
    return src, work, lambda: fn(work, out=work, workers=1, backend=backend)


def _peer_call(peer: str, n: int, dtype: str, direction: str):
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
            return src, work, lambda: scipy.fft.rfft(work, workers=1)
        return src, work, lambda: scipy.fft.irfft(work, n, workers=1)
    if peer == "numpy.fft":
        if forward:
            return src, work, lambda: np.fft.rfft(work)
        return src, work, lambda: np.fft.irfft(work, n)
    if peer == "torch.fft":
        try:
            import torch
        except Exception as exc:  # installed but broken
            raise NotImplementedError(f"torch does not import: {exc}") from exc
        torch.set_num_threads(1)
        t = torch.from_numpy(work)          # shares memory with work: refills reach it
        if forward:
            return src, work, lambda: torch.fft.rfft(t)
        return src, work, lambda: torch.fft.irfft(t, n)
    raise ValueError(peer)


class _Transform:
    param_names = ["method", "n", "dtype", "direction"]
    number = 1          # setup (which refills the input) runs before every timed call
    timeout = 600.0     # the first setup may compile numba kernels
    _make = None

    def setup(self, method, n, dtype, direction):
        key = (type(self).__name__, method, n, dtype, direction)
        if key not in _calls:
            _calls[key] = type(self)._make(method, n, dtype, direction)
        self.src, self.work, self.call = _calls[key]
        if key not in _warm:
            np.copyto(self.work, self.src)
            self.call()
            _warm.add(key)
        np.copyto(self.work, self.src)

    def time_transform(self, method, n, dtype, direction):
        self.call()

    def peakmem_transform(self, method, n, dtype, direction):
        self.call()


class Circfft(_Transform):
    """``circfft.rdfft(x, out=x)`` / ``circfft.irdfft(x, out=x)``, one worker."""

    params = [BACKENDS, SIZES, DTYPES, DIRECTIONS]
    _make = staticmethod(_circfft_call)


class Peers(_Transform):
    """scipy.fft, numpy.fft, scipy.fftpack (overwrite_x=True), torch.fft; one thread."""

    params = [PEERS, SIZES, DTYPES, DIRECTIONS]
    _make = staticmethod(_peer_call)
