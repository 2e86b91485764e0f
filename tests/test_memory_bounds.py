"""The extra memory of an in-place transform is what the docs say, even for very long rows.

``docs/algorithm.rst``, "Memory": an in-place ``rdfft(x, out=x)`` of rows of length ``n``
(a power of two) allocates the plan tables of ``n`` (``1.5 n`` twiddle values of the dtype and
``n/2`` int32 indices; cached, at most ``PLAN_CACHE_BYTES`` in all plus the most recent larger
plan) and, per worker, a scratch of ``128 n`` bytes for ``n <= 2**14`` and two rows beyond;
never anything proportional to the number of rows, and nothing while building the tables
beyond a 2^16-element chunk.  ``release_scratch()`` frees the kept scratch and the plans.

Measured with tracemalloc (numpy's allocations are traced) in a fresh process, after a warm-up
call of the same size class (so that compiling the kernels is not counted).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import require

_CHILD = r"""
import gc, json, sys, tracemalloc
import numpy as np
import circfft
from circfft._plan import plan_bytes
from circfft.backends.numba_backend import MAX_LANED_N, release_scratch, scratch_bytes

n, dtype, rows = int(sys.argv[1]), np.dtype(sys.argv[2]), int(sys.argv[3])
warm = np.ones((2, 2 * MAX_LANED_N) if n > MAX_LANED_N else (2, 64), dtype)
circfft.rdfft(warm, out=warm)
release_scratch()
x = np.random.default_rng(0).standard_normal((rows, n)).astype(dtype)
gc.collect()
tracemalloc.start()
circfft.rdfft(x, out=x)
_, peak = tracemalloc.get_traced_memory()
kept = tracemalloc.get_traced_memory()[0]
release_scratch()
gc.collect()
after = tracemalloc.get_traced_memory()[0]
print(json.dumps(dict(peak=peak, kept=kept, after=after, tables=plan_bytes(n, dtype),
                      scratch=scratch_bytes(n, dtype), nbytes=x.nbytes)))
"""


@pytest.mark.parametrize("n,dtype,rows", [(1 << 24, "float32", 1), (1 << 20, "float64", 3),
                                          (1 << 16, "float32", 64), (1 << 14, "float32", 256),
                                          (1 << 10, "float64", 1000)])
def test_in_place_extra_memory_is_bounded(n, dtype, rows):
    require("numba")
    run = subprocess.run([sys.executable, "-c", _CHILD, str(n), dtype, str(rows)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads(run.stdout.strip().splitlines()[-1])
    chunk = 2 * (1 << 16) * 8 * 4                 # float64 temporaries of one table chunk
    bound = m["tables"] + m["scratch"] + chunk + (1 << 20)
    assert m["peak"] <= bound, m
    # the documented formula itself, as a number: never a multiple of the input's size
    itemsize = np.dtype(dtype).itemsize
    scratch = 128 * n if n <= 2**14 else 2 * n * itemsize     # as rdfft's Notes state
    assert m["tables"] == 2 * ((3 * n) // 4) * itemsize + 4 * (n // 2)
    assert m["scratch"] == scratch
    assert m["after"] <= 1 << 20, m                   # release_scratch frees plans too
