"""The numba kernels on every path they take, against the independent oracles.

The kernels (``circfft/backends/_numba_*.py``) take different paths by length, which is why
the lengths below are listed by class rather than sampled:

- ``n < V`` (V = 16 float32 / 8 float64 lanes): columns copied one by one;
- ``n <= 512``: the whole FFT in L1, radix-4 stages ending in radix-4 or radix-2;
- ``1024 .. 4096``: one radix-8 pass, then L1 blocks of 64, 128 or 256 slots;
- ``8192 .. 32768``: two radix-8 levels; ``65536``: three;
- ``n > 2**16``: one row at a time, its V decimated sub-sequences in the lanes, the spectra
  combined with a DFT across the lanes (``_numba_long``).

and by layout: full blocks of V rows or not, rows 64-byte aligned or not (tiles shifted to the
alignment, the ends done by two overlapping tiles), unit column stride or not, rows side by
side (a transposed array), negative strides.  Each case is checked in place and against
``packed_rfft_oracle`` / ``packed_irfft_oracle`` (numpy.fft in float64) with the derived
per-row tolerance of ``oracles.tolerance``.  Also: ``workers`` never changes a bit, a lane
width the kernels were not written for is refused before anything is written, and a fresh
process compiles only the kernel its first call needs and loads it from numba's cache the
next time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import circfft
from conftest import require
from oracles import (assert_close, full_spectrum_norm, packed_irfft_oracle, packed_rfft_oracle,
                     row_norms, tolerance)

ROOT = Path(__file__).resolve().parents[1]
LANED = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
LONG = [2**17, 2**18]
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def _numba():
    require("numba")


def lanes(dtype) -> int:
    return 64 // np.dtype(dtype).itemsize


def forward_tol(x):
    n = x.shape[-1]
    return np.vectorize(lambda r: tolerance(n, x.dtype, r))(row_norms(x))[..., None]


def inverse_tol(X):
    n = X.shape[-1]
    norms = full_spectrum_norm(X)
    return np.vectorize(lambda r: tolerance(n, X.dtype, r))(norms)[..., None] / n


def check_in_place(x, what):
    """rdfft(x, out=x) against the oracle, then irdfft(X, out=X) of an independent packed
    spectrum against its oracle; x is a view of any layout (not modified elsewhere)."""
    x0 = np.array(x, dtype=np.float64)
    ref = packed_rfft_oracle(x0)
    assert circfft.rdfft(x, out=x, backend="numba") is x
    assert_close(x, ref, forward_tol(x0.astype(x.dtype)), err_msg=f"rdfft {what}")
    X0 = np.array(x, dtype=np.float64)              # a packed spectrum (of the input)
    assert circfft.irdfft(x, out=x, backend="numba") is x
    assert_close(x, packed_irfft_oracle(X0), inverse_tol(X0.astype(x.dtype)),
                 err_msg=f"irdfft {what}")


def aligned_rows(rows, n, dtype, offset_elements):
    """A (rows, n) C-ordered view whose data starts ``offset_elements`` past a 64-byte
    boundary (numpy alone gives 16-byte alignment)."""
    dtype = np.dtype(dtype)
    buf = np.empty(rows * n + 64, dtype)
    start = (-buf.ctypes.data % 64) // dtype.itemsize + offset_elements
    return buf[start:start + rows * n].reshape(rows, n)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", LANED)
def test_every_laned_size_class(n, dtype, rng):
    V = lanes(dtype)
    rows = max(1, min(2 * V + 3, 2**18 // n))       # full blocks and a partial one
    x = rng.standard_normal((rows, n)).astype(dtype)
    check_in_place(x, f"n={n} {np.dtype(dtype).name} rows={rows}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows", [1, 3, 7, 8, 15, 16, 17])
def test_partial_blocks(rows, dtype, rng):
    for n in (64, 1024):
        x = rng.standard_normal((rows, n)).astype(dtype)
        check_in_place(x, f"n={n} rows={rows}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_row_alignment(dtype, rng):
    """Rows starting at every element offset from a 64-byte boundary (the tiles shift)."""
    V = lanes(dtype)
    for n in (V, 2 * V, 64, 1024):
        for offset in range(V):
            x = aligned_rows(V + 5, n, dtype, offset)
            x[...] = rng.standard_normal(x.shape)
            check_in_place(x, f"n={n} offset={offset}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["strided", "transposed", "reversed", "reversed_rows",
                                    "row_gaps", "transposed_few"])
@pytest.mark.parametrize("n", [8, 64, 4096, 2**17])
def test_layouts(layout, n, dtype, rng):
    rows = 19 if n <= 4096 else 2
    base = rng.standard_normal((rows, n)).astype(dtype)
    if layout == "strided":                          # column stride 2 elements
        buf = np.zeros((rows, 2 * n), dtype)
        x = buf[:, ::2]
    elif layout == "transposed":                     # rows side by side in memory
        x = np.zeros((n, 2 * lanes(dtype)), dtype).T
        base = rng.standard_normal(x.shape).astype(dtype)
    elif layout == "transposed_few":                 # side by side, fewer than V rows
        x = np.zeros((n, 3), dtype).T
        base = rng.standard_normal(x.shape).astype(dtype)
    elif layout == "reversed":                       # negative column stride
        x = np.zeros((rows, n), dtype)[:, ::-1]
    elif layout == "reversed_rows":                  # negative row stride
        x = np.zeros((rows, n), dtype)[::-1]
    else:                                            # rows not a multiple of 64 bytes apart
        x = np.zeros((rows, n + 3), dtype)[:, :n]
    x[...] = base
    check_in_place(x, f"{layout} n={n}")
    if layout == "strided":
        assert not buf[:, 1::2].any(), "wrote between the elements of a strided row"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", LONG)
def test_long_rows(n, dtype, rng):
    x = rng.standard_normal((3, n)).astype(dtype)
    check_in_place(x, f"n={n}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_long_rows_to_2_20(dtype, rng):
    for n in (2**19, 2**20):
        x = rng.standard_normal((2, n)).astype(dtype)
        check_in_place(x, f"n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_long_rows_structured(dtype):
    """Impulses and a constant exercise the special bins of the lane combination (X_0,
    X_{n/2} and the runs next to them) exactly: their spectra are known in closed form."""
    n = 2**17
    x = np.zeros((4, n), dtype)
    x[0, 0] = 1.0                                   # flat spectrum
    x[1, 1] = 1.0                                   # W^k
    x[2, :] = 3.0                                   # 3n at k = 0
    x[3, n // 2] = 1.0                              # (-1)^k
    check_in_place(x, "structured long rows")


@pytest.mark.parametrize("n", [1024, 65536, 2**17])
def test_workers_change_no_bit(n, rng):
    """Two workers (the pool of Python threads) give the one-worker result bit for bit."""
    x = rng.standard_normal((2**20 // n + 5, n)).astype(np.float32)
    one = circfft.rdfft(x, backend="numba", workers=1)
    two = circfft.rdfft(x, backend="numba", workers=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(circfft.irdfft(one, backend="numba", workers=1),
                                  circfft.irdfft(one, backend="numba", workers=2))


def test_unsupported_lane_width_is_refused(monkeypatch, rng):
    """A lane width the compiled kernels were not written for raises before any write
    (a patched LANE_BYTES = 32 used to size the scratch for half the lanes the kernels
    wrote: "free(): invalid next size")."""
    from circfft.backends import numba_backend as nb

    x = rng.standard_normal((40, 64)).astype(np.float32)
    x0 = x.copy()
    monkeypatch.setattr(nb, "LANE_BYTES", 32)
    nb.release_scratch()
    for fn in (circfft.rdfft, circfft.irdfft):
        with pytest.raises(ValueError, match="LANE_BYTES"):
            fn(x, out=x, backend="numba")
        np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_kernels_refuse_short_scratch(dtype, rng):
    """The entry points check their scratch against their own lane count (defence in depth
    behind the backend's check): too short a scratch raises, nothing is written."""
    from circfft._plan import get_lane_twiddles, get_plan
    from circfft.backends import _numba_kernels as K
    from circfft.backends import _numba_long as L

    n = 256
    x = rng.standard_normal((5, n)).astype(dtype)
    x0 = x.copy()
    plan = get_plan(n, dtype)
    short = np.empty(n * lanes(dtype) // 2, dtype)
    for kernel in (K.forward_rows, K.inverse_rows):
        with pytest.raises(ValueError, match="scratch"):
            kernel(x.ctypes.data, 5, n, x.strides[0], x.strides[1], plan.twiddles,
                   plan.bitrev, x.dtype.type(1), short, short)
        np.testing.assert_array_equal(x, x0)
    n = 2**17
    x = rng.standard_normal((1, n)).astype(dtype)
    x0 = x.copy()
    V = lanes(dtype)
    plan, lt = get_plan(n // V, dtype), get_lane_twiddles(n, V, dtype)
    short = np.empty(n // 2, dtype)
    for kernel in (L.forward_long, L.inverse_long):
        with pytest.raises(ValueError, match="scratch"):
            kernel(x.ctypes.data, 1, n, x.strides[0], x.strides[1], plan.twiddles,
                   plan.bitrev, lt.A, lt.B, lt.R, x.dtype.type(1), short, short)
        np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_lane_dft_intrinsics(dtype, rng):
    """The DFTs across the lanes (decimation in frequency: bit-reversed out; in time:
    bit-reversed in) against numpy.fft on the same vector."""
    from numba import njit

    from circfft.backends._numba_simd import lane_count, lane_dft_dif, lane_dft_dit, vload, vstore

    @njit
    def run(a, o, dit):
        V = lane_count(a)
        if dit:
            re, im = lane_dft_dit(vload(a, 0), vload(a, V))
        else:
            re, im = lane_dft_dif(vload(a, 0), vload(a, V))
        vstore(o, 0, re)
        vstore(o, V, im)

    V = lanes(dtype)
    bits = V.bit_length() - 1
    rev = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(V)]
    z = rng.standard_normal(V) + 1j * rng.standard_normal(V)
    Z = np.fft.fft(z)
    tol = tolerance(V, dtype, float(np.linalg.norm(z)))
    out = np.empty(2 * V, dtype)
    run(np.concatenate([z.real, z.imag]).astype(dtype), out, False)
    assert_close(out, np.concatenate([Z[rev].real, Z[rev].imag]), tol)
    run(np.concatenate([z[rev].real, z[rev].imag]).astype(dtype), out, True)
    assert_close(out, np.concatenate([Z.real, Z.imag]), tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_lane_twiddle_tables(dtype):
    """A[k % R] * B[k // R] = W_n^(jk) for every lane j and column k.

    Bound: each table entry is cos/sin of a float64 angle 2 pi r / n (r = jk mod n exact):
    the angle is off by at most 2 pi eps64, numpy's cos/sin by 1 eps64, and the entry is
    then rounded to the dtype (eps/2); a product of two unit values adds the two errors.
    Reference in extended precision."""
    from circfft._plan import get_lane_twiddles

    n, V = 2**17, lanes(dtype)
    lt = get_lane_twiddles(n, V, dtype)
    A = lt.A.reshape(-1, 2, V).astype(np.longdouble)
    B = lt.B.reshape(-1, 2, V).astype(np.longdouble)
    k = np.arange(n // V)
    ar, ai = A[k % lt.R, 0], A[k % lt.R, 1]
    br, bi = B[k // lt.R, 0], B[k // lt.R, 1]
    pi = 4 * np.arctan(np.longdouble(1))
    angle = 2 * pi * ((k[:, None] * np.arange(V)[None, :]) % n).astype(np.longdouble) / n
    err = np.maximum(np.abs(ar * br - ai * bi - np.cos(angle)),
                     np.abs(ar * bi + ai * br + np.sin(angle)))
    eps64 = np.finfo(np.float64).eps
    per_entry = 0.5 * np.finfo(dtype).eps + (2 * np.pi + 1) * eps64
    assert float(err.max()) <= 2 * per_entry


_FIRST_CALL = textwrap.dedent("""
    import json, sys
    import numpy as np
    import circfft

    def compiled(module):
        from numba.core.dispatcher import Dispatcher
        return {name: [str(s) for s in obj.signatures] for name, obj in vars(module).items()
                if isinstance(obj, Dispatcher) and obj.signatures}

    calls = [c.split(":") for c in sys.argv[1].split(",")]
    for dtype, direction, n in calls:
        x = np.ones((3, int(n)), dtype)
        (circfft.rdfft if direction == "forward" else circfft.irdfft)(x, out=x, backend="numba")
    from circfft.backends import _numba_fft, _numba_kernels, _numba_simd
    report = dict(kernels=compiled(_numba_kernels), fft=compiled(_numba_fft),
                  long_imported="circfft.backends._numba_long" in sys.modules,
                  hits={k: len(getattr(_numba_kernels, k).stats.cache_hits)
                        for k in ("forward_rows", "inverse_rows")},
                  misses={k: len(getattr(_numba_kernels, k).stats.cache_misses)
                          for k in ("forward_rows", "inverse_rows")})
    print(json.dumps(report))
""")


def _first_calls(cache_dir, calls):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", _FIRST_CALL, calls], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_first_call_compiles_only_what_it_needs_and_caches_it(tmp_path):
    """In a fresh process with an empty numba cache, a float32 forward call compiles the
    float32 forward entry point and its helpers only: no inverse, no float64, no long-row
    kernel.  A float64 inverse call then adds just that.  The next process loads both entry
    points from the cache and compiles nothing."""
    first = _first_calls(tmp_path, "float32:forward:64")
    assert first["kernels"]["forward_rows"] and len(first["kernels"]["forward_rows"]) == 1
    assert "inverse_rows" not in first["kernels"]
    assert not first["long_imported"]
    for sigs in list(first["kernels"].values()) + list(first["fft"].values()):
        assert all("float64" not in s for s in sigs), first
    assert first["misses"]["forward_rows"] == 1 and first["hits"]["forward_rows"] == 0

    both = _first_calls(tmp_path, "float32:forward:64,float64:inverse:1024")
    assert both["hits"] == {"forward_rows": 1, "inverse_rows": 0}, both
    assert both["misses"] == {"forward_rows": 0, "inverse_rows": 1}, both
    assert [s for s in both["kernels"]["inverse_rows"]] and \
        all("float64" in s for s in both["kernels"]["inverse_rows"])

    again = _first_calls(tmp_path, "float32:forward:64,float64:inverse:1024")
    assert again["hits"] == {"forward_rows": 1, "inverse_rows": 1}, again
    assert again["misses"] == {"forward_rows": 0, "inverse_rows": 0}, again
    assert again["fft"] == {}, "a cached entry point needs none of its helpers compiled"
