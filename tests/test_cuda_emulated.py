"""The project's CUDA kernels, run on the CPU through the emulation shim, against numpy oracles.

``tests/cuda_emulation/`` holds a small CUDA emulation for g++ (C++20): one std::thread per CUDA
thread, a real barrier for ``__syncthreads()``, blocks run one after another (see the header
comment of ``cuda_runtime_emu.h`` for what is and is not emulated).  The first group of tests
checks the shim itself on small kernels of its own (``cuda_emulation/kernels``); the rest
compile every instantiation that ``kernel_instantiations()`` lists, exactly as the GPU backend
uses them, and compare the transforms and circulant products with numpy in float64.

Everything is sized to run in well under two minutes of CPU time on two cores; each source is
compiled once per session (cached under pytest's tmp_path_factory).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cuda_emulation.emulator import (EmulatedModule, EmulationError, KernelLaunchError,
                                     build_module)
from oracles import (STORAGE_EPS, assert_close, bfloat16_bits_oracle, bfloat16_value_oracle,
                     block_circulant_matrix_oracle, complex_pair_product_oracle,
                     full_spectrum_norm, pack_complex, packed_irfft_oracle, packed_rfft_oracle,
                     round_trip_tolerance, row_norms, scale_factor, storage_round_oracle,
                     tolerance,
                     unpack_to_complex)

# g++ >= 12: skipped without it, failed under CI=true (conftest.py's ``gxx`` fixture runs
# before the session fixtures below build anything).
pytestmark = [pytest.mark.cuda_emulated, pytest.mark.usefixtures("gxx")]

SELFTEST_SOURCE = Path(__file__).resolve().parent / "cuda_emulation" / "kernels" / "shim_selftest.cu"
SELFTEST_KERNELS = ("block_sum<float>", "block_sum<double>", "smem_reverse", "smem_peek",
                    "warp_shuffles", "convert_storage", "sincospi_table", "racy_neighbour",
                    "divergent_barrier")

#: storage dtype name -> (numpy dtype holding the storage bits, C++ storage, C++ compute,
#: numpy compute dtype).  bfloat16 has no numpy dtype: its bits travel in uint16.
STORAGE = {
    "float32": (np.float32, "float", "float", np.float32),
    "float64": (np.float64, "double", "double", np.float64),
    "float16": (np.float16, "__half", "float", np.float32),
    "bfloat16": (np.uint16, "__nv_bfloat16", "float", np.float32),
}
#: Dynamic shared memory a block may use (the shim's limit: sm_90's 227 KiB opt-in maximum).
SMEM_LIMIT = 227 * 1024


# ---------------------------------------------------------------------------------------------
# Session fixtures: build once
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def emu_build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cuda_emulation")


@pytest.fixture(scope="session")
def selftest(emu_build_dir) -> EmulatedModule:
    return EmulatedModule(build_module(SELFTEST_SOURCE, SELFTEST_KERNELS, emu_build_dir))


def _instantiations():
    """``kernel_instantiations()`` of the GPU backend (importable without cupy)."""
    from circfft.backends._cuda_build import kernel_instantiations

    return kernel_instantiations()


def _cuda_dir() -> Path:
    import circfft

    return Path(circfft.__file__).resolve().parent / "backends" / "cuda"


class ProjectKernels:
    """Every instantiation the backend lists, built in one library per source.

    The backend compiles one module per (source, storage dtype) with that dtype's ``-D``
    options; the shim defines every storage type, so one g++ build per source with the union
    of the options compiles the same code (and costs a quarter of the time).
    """

    def __init__(self, build_dir: Path):
        groups: dict = {}
        for source, expr, options in _instantiations():
            exprs, opts = groups.setdefault(source, ([], []))
            if expr not in exprs:
                exprs.append(expr)
            opts.extend(o for o in options if o not in opts)
        self.sources = set(groups)
        self.expected = [expr for exprs, _ in groups.values() for expr in exprs]
        self._modules = {}
        for source, (exprs, options) in groups.items():
            module = EmulatedModule(build_module(_cuda_dir() / source, exprs, build_dir, options))
            for name in module.names:
                self._modules[name.replace(" ", "")] = module

    def get(self, kernel: str, storage: str | None = None, compute_only: bool = False):
        """Kernel ``kernel<S, C>`` (or ``kernel<C>`` with ``compute_only``) for ``storage``."""
        _, s_cpp, c_cpp, _ = STORAGE[storage]
        expr = f"{kernel}<{c_cpp}>" if compute_only else f"{kernel}<{s_cpp}, {c_cpp}>"
        key = expr.replace(" ", "")
        if key not in self._modules:
            pytest.fail(f"{expr} is not among kernel_instantiations() "
                        f"({sorted(self._modules)})")
        return self._modules[key].get_function(expr)


@pytest.fixture(scope="session")
def project(emu_build_dir) -> ProjectKernels:
    return ProjectKernels(emu_build_dir)


# ---------------------------------------------------------------------------------------------
# The shim itself
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shim_static_shared_reduction(selftest, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(-1000, 1000, size=3001).astype(dtype)  # integers: the sum is exact
    out = np.full(5, np.nan, dtype=dtype)
    name = "block_sum<float>" if dtype == np.float32 else "block_sum<double>"
    selftest.get_function(name)((5,), (128,), (x, out, x.size))
    np.testing.assert_array_equal(out, x.astype(np.float64).sum() + np.arange(5))


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_shim_dynamic_shared_and_barriers_in_loops(selftest, rounds):
    rng = np.random.default_rng(2)
    n, rows = 300, 4
    base = rng.standard_normal((rows, n + 7)).astype(np.float32)
    expected = base.copy()
    view = base[:, 3:3 + n]
    if rounds % 2:
        expected[:, 3:3 + n] = expected[:, 3:3 + n][:, ::-1]
    selftest.get_function("smem_reverse")((rows,), (96,), (view, n, n + 7, rounds),
                                          shared_mem=4 * n)
    np.testing.assert_array_equal(base, expected)


def test_shim_poisons_dynamic_shared_memory(selftest):
    out = np.zeros(1000, dtype=np.uint8)
    selftest.get_function("smem_peek")((1,), (64,), (out, out.size), shared_mem=out.size)
    assert np.all(out == 0xFF)


@pytest.mark.parametrize("threads", [64, 48])
def test_shim_warp_shuffles(selftest, threads):
    x = (np.arange(threads, dtype=np.float32) * 3 + 1) ** 2 % 97
    out = np.full((threads, 4), np.nan, dtype=np.float32)
    selftest.get_function("warp_shuffles")((1,), (threads,), (x, out))
    lanes = np.arange(threads)
    warp0 = lanes // 32 * 32
    in_block = lambda src: src < threads
    # xor butterfly: partner lanes outside the block (partial last warp) return the own value,
    # so compute the emulated CUDA semantics step by step.
    s = x.astype(np.float64).copy()
    for m in (16, 8, 4, 2, 1):
        src = warp0 + ((lanes % 32) ^ m)
        s = s + np.where(in_block(src), s[np.minimum(src, threads - 1)], s)
    np.testing.assert_array_equal(out[:, 0], s)
    np.testing.assert_array_equal(out[:, 1], x[warp0])
    down = lanes + 1
    ok = ((lanes % 32) + 1 < 32) & in_block(down)
    np.testing.assert_array_equal(out[:, 2], np.where(ok, x[np.minimum(down, threads - 1)], x))
    np.testing.assert_array_equal(out[:, 3], x[lanes ^ 1])


def test_shim_storage_conversions(selftest):
    rng = np.random.default_rng(3)
    special = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e5, 2.0**-24, 2.0**-25,
                        3 * 2.0**-26, 6e-8, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8,
                        1 + 3 * 2.0**-8, 3.3e38, np.inf, -np.inf, np.nan, 1e-40],
                       dtype=np.float32)
    x = np.concatenate([special, rng.standard_normal(2000).astype(np.float32) *
                        np.float32(2.0) ** rng.integers(-30, 30, 2000).astype(np.float32)])
    n = x.size
    half = np.zeros(n, dtype=np.float16)
    bf16 = np.zeros(n, dtype=np.uint16)
    back = np.zeros(2 * n, dtype=np.float32)
    selftest.get_function("convert_storage")(((n + 127) // 128,), (128,),
                                             (x, half, bf16, back, n))
    with np.errstate(over="ignore"):
        expected_half = x.astype(np.float16)
    np.testing.assert_array_equal(half.view(np.uint16)[~np.isnan(x)],
                                  expected_half.view(np.uint16)[~np.isnan(x)])
    assert np.all(np.isnan(half[np.isnan(x)]))
    np.testing.assert_array_equal(bf16, bfloat16_bits_oracle(x))
    np.testing.assert_array_equal(back[:n], storage_round_oracle(x, "float16"))
    np.testing.assert_array_equal(back[n:], storage_round_oracle(x, "bfloat16"))


def test_shim_sincospi(selftest):
    quarters = np.arange(-40, 41) / 4.0                      # exact multiples of 1/4
    x = np.concatenate([quarters, np.random.default_rng(4).uniform(-5, 5, 500)])
    n = x.size
    out32 = np.zeros(2 * n, dtype=np.float32)
    out64 = np.zeros(2 * n, dtype=np.float64)
    selftest.get_function("sincospi_table")(((n + 63) // 64,), (64,), (x, out32, out64, n))
    # Reference: reduce x to r = x - round(x), |r| <= 1/2, exactly; sin(pi x) = (-1)^k sin(pi r).
    def reference(v):
        k = np.round(v)
        sign = 1.0 - 2.0 * (np.abs(k) % 2)
        return sign * np.sin(np.pi * (v - k)), sign * np.cos(np.pi * (v - k))

    s_ref, c_ref = reference(x)
    assert np.max(np.abs(out64[:n] - s_ref)) <= 2 * np.finfo(np.float64).eps
    assert np.max(np.abs(out64[n:] - c_ref)) <= 2 * np.finfo(np.float64).eps
    s32, c32 = reference(x.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(out32[:n] - s32)) <= np.finfo(np.float32).eps
    assert np.max(np.abs(out32[n:] - c32)) <= np.finfo(np.float32).eps
    # CUDA's sincospi is exact at multiples of 1/2: 0 and +-1 exactly.
    halves = np.flatnonzero(np.fmod(quarters * 2, 1) == 0)
    k = (quarters[halves] * 2).astype(int) % 4
    np.testing.assert_array_equal(out64[halves], np.choose(k, [0.0, 1.0, 0.0, -1.0]))
    np.testing.assert_array_equal(out64[n + halves], np.choose(k, [1.0, 0.0, -1.0, 0.0]))
    np.testing.assert_array_equal(out32[halves], np.choose(k, [0.0, 1.0, 0.0, -1.0]))


def test_shim_races_are_real(selftest):
    """Nothing is serialised: a kernel missing its __syncthreads must go wrong (sometimes)."""
    out = np.zeros(128, dtype=np.int32)
    kernel = selftest.get_function("racy_neighbour")
    kernel((1,), (128,), (out, 50, 1))
    assert np.all(out == 0), "with the barriers every read sees its neighbour's new value"
    stale = 0
    for _ in range(20):
        kernel((1,), (128,), (out, 50, 0))
        stale += int(out.sum())
        if stale:
            break
    assert stale > 0, "20 launches of a racy kernel never raced: the shim serialises threads"


def test_shim_reports_non_uniform_barrier(selftest):
    out = np.zeros(64, dtype=np.float32)
    with pytest.raises(KernelLaunchError, match="not reached uniformly"):
        selftest.get_function("divergent_barrier")((2,), (64,), (out,))


def test_shim_rejects_bad_launches(selftest):
    x = np.zeros(8, dtype=np.float32)
    out = np.zeros(8, dtype=np.float32)
    kernel = selftest.get_function("block_sum<float>")
    with pytest.raises(KernelLaunchError, match="block dimensions"):
        kernel((1,), (2048,), (x, out, 8))
    with pytest.raises(KernelLaunchError, match="shared memory"):
        kernel((1,), (32,), (x, out, 8), shared_mem=SMEM_LIMIT + 1)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        kernel((1,), (32,), (x, out))
    with pytest.raises(TypeError, match="pointer"):
        kernel((1,), (32,), (x, 1.5, 8))
    with pytest.raises(ValueError, match="does not fit"):
        kernel((1,), (32,), (x, out, 2**63))


def test_shim_refuses_other_dynamic_shared_declarations(tmp_path):
    src = tmp_path / "bad.cu"
    src.write_text("__global__ void k(float* x) {\n  extern __shared__ float s[];\n"
                   "  x[0] = s[0];\n}\n")
    with pytest.raises(EmulationError, match=r"bad\.cu:2: dynamic shared memory"):
        build_module(src, ["k"], tmp_path / "build")


# ---------------------------------------------------------------------------------------------
# Helpers for the project's kernels
# ---------------------------------------------------------------------------------------------
def padded_size(m: int) -> int:
    """Elements per padded shared-memory array (``padded_size`` in common.cuh)."""
    return m + (m >> 5) + 1


def twiddle_table(n: int, tw_bits: int, compute) -> np.ndarray:
    """The two-level table documented above ``twiddle()`` in common.cuh, built here from
    cos/sin of the exact angle (independent of the backend's host code)."""
    lo = np.arange(1 << tw_bits)
    hi = np.arange(max(1, -(-(n // 2) // (1 << tw_bits)))) << tw_bits
    k = np.concatenate([lo, hi]).astype(np.int64)
    frac = (k % n) / n                                     # exact for power-of-two n
    tw = np.empty(2 * k.size, dtype=np.float64)
    tw[0::2] = np.cos(2 * np.pi * frac)
    tw[1::2] = -np.sin(2 * np.pi * frac)
    # exact values at multiples of pi/2 (as CUDA's sincospi would give)
    quarter = (4 * (k % n)) % n == 0
    q = (4 * (k % n) // n)[quarter]
    tw[0::2][quarter] = np.choose(q % 4, [1.0, 0.0, -1.0, 0.0])
    tw[1::2][quarter] = -np.choose(q % 4, [0.0, 1.0, 0.0, -1.0])
    return tw.astype(compute)


def full_twiddle_bits(n: int) -> int:
    return max(0, (n // 2).bit_length() - 1)


def to_storage(x64: np.ndarray, storage: str) -> np.ndarray:
    """float64 values -> an array of the storage format (bfloat16 as uint16 bits)."""
    if storage == "bfloat16":
        return bfloat16_bits_oracle(np.asarray(x64, dtype=np.float32))
    return np.asarray(x64).astype(STORAGE[storage][0])


def from_storage(a: np.ndarray, storage: str) -> np.ndarray:
    """float64 values of a storage array, always a new array (kernels run in place)."""
    if storage == "bfloat16":
        return bfloat16_value_oracle(a)
    return np.array(a, dtype=np.float64, copy=True)


def one_pass_max_n(storage: str) -> int:
    """Largest power-of-two n whose one row fits the shared-memory limit (RPB = 1)."""
    c_size = np.dtype(STORAGE[storage][3]).itemsize
    n = 2
    while 2 * padded_size(n) * c_size <= SMEM_LIMIT:     # next n = 2n has m = n
        n *= 2
    return n


def elem_strides(x: np.ndarray) -> tuple[int, int]:
    item = x.itemsize
    assert x.strides[0] % item == 0 and x.strides[1] % item == 0
    return x.strides[0] // item, x.strides[1] // item


def run_rows(project, storage, x, *, inverse, scale, T, RPB=1, grid=None, tw_bits=None):
    """Launch rdfft_rows in place on the 2-d storage view ``x`` (rows along axis 0)."""
    rows, n = x.shape
    log2n = n.bit_length() - 1
    compute = STORAGE[storage][3]
    bits = full_twiddle_bits(n) if tw_bits is None else tw_bits
    tw = twiddle_table(n, bits, compute)
    rs, es = elem_strides(x)
    smem = RPB * 2 * padded_size(n // 2) * np.dtype(compute).itemsize
    grid = grid or max(1, -(-rows // RPB))
    project.get("rdfft_rows", storage)((grid,), (T, RPB), (
        x, rows, rs, es, log2n, tw, bits, scale, int(inverse)), shared_mem=smem)


def run_multipass(project, storage, x, *, inverse, scale, logS, tail_threads=64,
                  grid=3, block=64, tw_bits=None):
    """The multi-pass schedule on the 2-d storage view ``x``: (merge,) passes of up to 3
    stages over global memory, the last logS stages in shared memory, then split/unscramble."""
    rows, n = x.shape
    log2n = n.bit_length() - 1
    log2m = log2n - 1
    assert 1 <= logS < log2m
    compute = STORAGE[storage][3]
    bits = full_twiddle_bits(n) if tw_bits is None else tw_bits
    tw = twiddle_table(n, bits, compute)
    rs, es = elem_strides(x)
    work = np.full(rows * n, np.nan, dtype=compute)
    if inverse:
        project.get("rdfft_merge", storage)((grid,), (block,), (
            x, rows, rs, es, work, log2n, tw, bits))
    h_log, first = log2m - 1, True
    while h_log >= logS:
        r = min(3, h_log - logS + 1)
        project.get("rdfft_pass", storage)((grid,), (block,), (
            x, rs, es, work, rows, log2n, h_log, r, tw, bits, int(inverse),
            int(first and not inverse)))
        h_log -= r
        first = False
    smem = 2 * padded_size(1 << logS) * np.dtype(compute).itemsize
    project.get("rdfft_tail", storage, compute_only=True)((grid,), (tail_threads,), (
        work, rows, log2n, logS, tw, bits, int(inverse)), shared_mem=smem)
    if inverse:
        project.get("rdfft_unscramble", storage)((grid,), (block,), (
            work, x, rows, rs, es, log2n, scale))
    else:
        project.get("rdfft_split", storage)((grid,), (block,), (
            work, x, rows, rs, es, log2n, tw, bits, scale))


def structured_rows(n: int, rng) -> np.ndarray:
    """Impulses, a constant, alternating signs, small integers, zeros and randn (float64)."""
    rows = [np.zeros(n), np.zeros(n), np.ones(n), (-1.0) ** np.arange(n),
            rng.integers(-8, 9, n).astype(np.float64), np.zeros(n), rng.standard_normal(n)]
    rows[0][0] = 1.0
    rows[1][min(n - 1, 3)] = 1.0
    return np.stack(rows)


def check_against_oracle(project_out, storage, x_in64, *, inverse, norm, n, err=""):
    """Compare a kernel's output (float64 values) with numpy; tolerance from oracles.tolerance
    in the compute dtype, plus one rounding of each output to the 16-bit storage formats."""
    compute = STORAGE[storage][3]
    if inverse:
        expected = packed_irfft_oracle(x_in64, norm=norm)
        norms = full_spectrum_norm(x_in64)
    else:
        expected = packed_rfft_oracle(x_in64, norm=norm)
        norms = row_norms(x_in64)
    factor = scale_factor(n, norm, forward=not inverse)
    atol = tolerance(n, compute, float(np.max(norms))) * factor
    if storage in STORAGE_EPS:
        atol = atol + 0.5 * STORAGE_EPS[storage] * np.abs(expected) + 2.0**-24
    assert_close(project_out, expected, atol, err)
    zero_rows = ~np.any(x_in64 != 0, axis=-1)
    assert np.all(project_out[zero_rows] == 0), f"zero rows must stay exactly zero. {err}"


def threads_for(n: int) -> int:
    """Threads per row for the tests: enough to cover the butterflies, at most 256."""
    return int(min(256, max(1, n // 8)))


# ---------------------------------------------------------------------------------------------
# The project's kernels
# ---------------------------------------------------------------------------------------------
def test_every_instantiation_builds(project):
    """All of kernel_instantiations() compiles under the shim with passable parameter types."""
    assert project.expected, "kernel_instantiations() is empty"
    for source in project.sources:
        assert (_cuda_dir() / source).is_file(), source
    for expr in project.expected:
        module = project._modules[expr.replace(" ", "")]
        kernel = module.get_function(expr)
        assert "X" not in kernel.signature, f"{expr}: parameter type the tests cannot pass"


@pytest.mark.parametrize("storage", ["float32", "float64"])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_rdfft_rows_every_one_pass_size(project, storage, inverse):
    """Every power of two the one-pass kernel supports, randn rows, norms in rotation."""
    rng = np.random.default_rng(10 + inverse)
    n = 2
    while n <= one_pass_max_n(storage):
        norm = ("backward", "ortho", "forward")[n.bit_length() % 3]
        rows = 3 if n <= 4096 else 1
        x64 = rng.standard_normal((rows, n))
        x = to_storage(x64, storage)
        x_in = from_storage(x, storage)
        run_rows(project, storage, x, inverse=inverse, T=threads_for(n), RPB=1,
                 scale=scale_factor(n, norm, forward=not inverse))
        check_against_oracle(from_storage(x, storage), storage, x_in, inverse=inverse,
                             norm=norm, n=n, err=f"n={n} {storage} norm={norm}")
        n *= 2


@pytest.mark.parametrize("storage", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("n", [2, 4, 8, 64, 1024])
def test_rdfft_rows_structured(project, storage, inverse, n):
    rng = np.random.default_rng(n)
    x64 = structured_rows(n, rng)
    if inverse:   # a packed spectrum of the same rows, so the inverse sees realistic input
        x64 = packed_rfft_oracle(x64)
    x = to_storage(x64, storage)
    x_in = from_storage(x, storage)
    for norm in ("backward", "ortho", "forward"):
        y = x.copy()
        run_rows(project, storage, y, inverse=inverse, T=threads_for(n), RPB=2, grid=2,
                 scale=scale_factor(n, norm, forward=not inverse))
        check_against_oracle(from_storage(y, storage), storage, x_in, inverse=inverse,
                             norm=norm, n=n, err=f"n={n} {storage} norm={norm}")


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [256, 8192])
def test_rdfft_rows_half_storage_round_trip(project, storage, n):
    rng = np.random.default_rng(5)
    x = to_storage(rng.standard_normal((2, n)), storage)
    x_in = from_storage(x, storage)
    run_rows(project, storage, x, inverse=False, T=threads_for(n), scale=1.0)
    spec = from_storage(x, storage)
    check_against_oracle(spec, storage, x_in, inverse=False, norm="backward", n=n)
    run_rows(project, storage, x, inverse=True, T=threads_for(n), scale=1.0 / n)
    back = from_storage(x, storage)
    # two transforms, each rounded once to the storage format: relative storage error of the
    # spectrum (through the inverse, norm-wise) plus one rounding of the result.
    eps_s = STORAGE_EPS[storage]
    atol = (eps_s * float(np.max(full_spectrum_norm(spec))) / math.sqrt(n) * 2
            + 0.5 * eps_s * np.abs(x_in)
            + round_trip_tolerance(n, np.float32, float(np.max(row_norms(x_in)))))
    assert_close(back, x_in, atol, f"round trip n={n} {storage}")


@pytest.mark.parametrize("geometry", [(1, 1, 1), (32, 3, 2), (48, 2, 1), (128, 1, 2)],
                         ids=lambda g: "T%d-RPB%d-grid%d" % g)
def test_rdfft_rows_launch_geometries(project, geometry):
    """Any threads per row, rows per block and grid (grid-stride loop over row groups, a last
    group with fewer rows than RPB)."""
    T, RPB, grid = geometry
    n, rows = 512, 7
    rng = np.random.default_rng(6)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x_in = x.astype(np.float64)
    run_rows(project, "float32", x, inverse=False, T=T, RPB=RPB, grid=grid, scale=1.0)
    check_against_oracle(x.astype(np.float64), "float32", x_in, inverse=False,
                         norm="backward", n=n, err=f"geometry {geometry}")


@pytest.mark.parametrize("storage", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["row_stride", "elem_stride_2", "negative_strides"])
def test_rdfft_rows_strided(project, storage, layout):
    """Strided and negative-stride rows; elements outside the view stay untouched."""
    n, rows = 256, 3
    rng = np.random.default_rng(7)
    base = rng.standard_normal((rows + 1, 2 * n + 5)).astype(STORAGE[storage][0])
    before = base.copy()
    if layout == "row_stride":
        sel = (slice(0, rows), slice(3, 3 + n))
    elif layout == "elem_stride_2":
        sel = (slice(0, rows), slice(1, 1 + 2 * n, 2))
    else:
        sel = (slice(rows, 0, -1), slice(2 * n, 0, -2))
    view = base[sel]
    assert view.shape == (rows, n)
    for inverse in (False, True):
        x_in = view.astype(np.float64)
        run_rows(project, storage, view, inverse=inverse, T=32, RPB=2, grid=1,
                 scale=scale_factor(n, "ortho", forward=not inverse))
        check_against_oracle(view.astype(np.float64), storage, x_in, inverse=inverse,
                             norm="ortho", n=n, err=layout)
    mask = np.ones(base.shape, dtype=bool)
    mask[sel] = False
    np.testing.assert_array_equal(base[mask], before[mask])


@pytest.mark.parametrize("tw_bits", [0, 2, 5])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_rdfft_rows_two_level_twiddles(project, tw_bits, inverse):
    """The hi * lo twiddle product (used for n/2 > 2^16 on the GPU) at a size we can run."""
    n = 2048
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, n))
    x_in = x.copy()
    run_rows(project, "float64", x, inverse=inverse, T=64, tw_bits=tw_bits,
             scale=scale_factor(n, None, forward=not inverse))
    check_against_oracle(x, "float64", x_in, inverse=inverse, norm=None, n=n,
                         err=f"tw_bits={tw_bits}")


MULTIPASS_CASES = [
    # (storage, n, logS): small sizes with many passes, then sizes above the one-pass limit
    ("float32", 8, 1), ("float32", 16, 1), ("float32", 64, 2), ("float64", 256, 3),
    ("float32", 1024, 5), ("float16", 512, 4), ("bfloat16", 512, 2),
    ("float32", 2 * one_pass_max_n("float32"), 11),
    ("float64", 2 * one_pass_max_n("float64"), 10),
]


@pytest.mark.parametrize("storage,n,logS", MULTIPASS_CASES,
                         ids=[f"{s}-n{n}-S{2**l}" for s, n, l in MULTIPASS_CASES])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_rdfft_multipass(project, storage, n, logS, inverse):
    rng = np.random.default_rng(n + logS)
    rows = 3 if n <= 4096 else 1
    x64 = rng.standard_normal((rows, n))
    x64[0] = structured_rows(n, rng)[4] if n >= 8 else x64[0]     # integers in row 0
    x = to_storage(x64, storage)
    x_in = from_storage(x, storage)
    norm = "ortho"
    run_multipass(project, storage, x, inverse=inverse, logS=logS,
                  scale=scale_factor(n, norm, forward=not inverse))
    check_against_oracle(from_storage(x, storage), storage, x_in, inverse=inverse, norm=norm,
                         n=n, err=f"multipass n={n} logS={logS}")


def test_rdfft_multipass_strided_two_level(project):
    """Multi-pass on strided rows with a two-level twiddle table."""
    n, rows = 1024, 2
    rng = np.random.default_rng(9)
    base = rng.standard_normal((rows, 2 * n)).astype(np.float32)
    view = base[:, ::-2]
    for inverse in (False, True):
        x_in = view.astype(np.float64)
        run_multipass(project, "float32", view, inverse=inverse, logS=4, tw_bits=3,
                      scale=1.0 if not inverse else 1.0 / n)
        check_against_oracle(view.astype(np.float64), "float32", x_in, inverse=inverse,
                             norm="backward", n=n)


def test_rdfft_rows_backend_like_geometry(project):
    """Tiny rows packed many to a block, as the GPU backend launches them (T = m/8 -> 1,
    up to 256 / T rows per block)."""
    n, rows = 16, 300
    rng = np.random.default_rng(11)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x_in = x.astype(np.float64)
    run_rows(project, "float32", x, inverse=False, T=1, RPB=256, grid=1, scale=1.0)
    check_against_oracle(x.astype(np.float64), "float32", x_in, inverse=False,
                         norm="backward", n=n)


@pytest.mark.parametrize("storage", ["float32", "float64"])
def test_rdfft_multipass_backend_schedule(project, storage):
    """Above the one-pass limit with the tail chunk the backend uses there: the largest
    one-pass size (logS = max one-pass log2 n - 1), S/8 threads up to 512."""
    n = 2 * one_pass_max_n(storage)
    logS = one_pass_max_n(storage).bit_length() - 2
    threads = min(512, max(32, (1 << logS) // 8))
    rng = np.random.default_rng(12)
    for inverse in (False, True):
        x = rng.standard_normal((1, n)).astype(storage)
        x_in = x.astype(np.float64)
        run_multipass(project, storage, x, inverse=inverse, logS=logS, tail_threads=threads,
                      grid=4, block=256, scale=scale_factor(n, None, forward=not inverse))
        check_against_oracle(x.astype(np.float64), storage, x_in, inverse=inverse,
                             norm=None, n=n, err=f"n={n} logS={logS}")


# ---------------------------------------------------------------------------------------------
# circulant.cu
# ---------------------------------------------------------------------------------------------
def pair_magnitudes(A, B) -> np.ndarray:
    """|A_k| |B_k| of the complex pairs, in both packed slots of each pair (float64)."""
    mag = np.abs(unpack_to_complex(A)) * np.abs(unpack_to_complex(B))
    return pack_complex(mag * (1 + 1j), np.shape(A)[-1])


@pytest.mark.parametrize("storage", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 64, 127, 1024])
@pytest.mark.parametrize("conj", [0, 1])
def test_spectral_mul(project, storage, n, conj):
    rng = np.random.default_rng(20 + n + conj)
    rows = 4
    A = to_storage(rng.standard_normal((rows, n)), storage)
    B = to_storage(rng.integers(-4, 5, (rows, n)).astype(np.float64), storage)  # integers
    A_in, B_in = from_storage(A, storage), from_storage(B, storage)
    Z = np.full_like(A, 0)
    sa, sb, sz = (elem_strides(v) for v in (A, B, Z))
    project.get("spectral_mul", storage)((3,), (64,), (
        A, *sa, B, *sb, Z, *sz, rows, n, conj))
    expected = complex_pair_product_oracle(A_in, B_in, conj=bool(conj))
    eps_c = float(np.finfo(STORAGE[storage][3]).eps)
    atol = 3 * eps_c * pair_magnitudes(A_in, B_in)
    if storage in STORAGE_EPS:
        atol = atol + 0.5 * STORAGE_EPS[storage] * np.abs(expected) + 2.0**-24
    assert_close(from_storage(Z, storage), expected, atol, f"n={n} conj={conj}")


@pytest.mark.parametrize("alias", ["z_is_a", "z_is_b"])
def test_spectral_mul_in_place_broadcast_strided(project, alias):
    """Output aliasing an input, a broadcast operand (row stride 0), strided rows."""
    n, rows = 96, 5
    rng = np.random.default_rng(21)
    a_row = rng.standard_normal(n)
    base = rng.standard_normal((rows, 2 * n + 1))
    B = base[:, ::-2][:, :n]                                  # negative element stride
    A = np.broadcast_to(a_row, (rows, n)).copy() if alias == "z_is_a" else a_row[None, :]
    expected = complex_pair_product_oracle(np.broadcast_to(a_row, (rows, n)), B.copy(),
                                           conj=True)
    before = base.copy()
    if alias == "z_is_a":
        Z, sa = A, elem_strides(A)
    else:
        Z, sa = B, (0, 1)
    sb, sz = elem_strides(B), elem_strides(Z)
    project.get("spectral_mul", "float64")((2,), (32,), (
        A, *sa, B, *sb, Z, *sz, rows, n, 1))
    atol = 3 * np.finfo(np.float64).eps * pair_magnitudes(np.broadcast_to(a_row, (rows, n)),
                                                          B if alias == "z_is_a" else expected)
    assert_close(Z, expected, np.maximum(atol, 1e-14 * np.abs(expected).max()), alias)
    if alias == "z_is_a":
        np.testing.assert_array_equal(base, before)          # B was only read


def _bc_kernel(rng, storage, nout, nin, b):
    """Packed spectra of a random time-domain kernel (nout, nin, b) in storage, and their
    float64 values."""
    W = to_storage(packed_rfft_oracle(rng.standard_normal((nout, nin, b))), storage)
    return W, from_storage(W, storage)


@pytest.mark.parametrize("storage", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(3, 2, 3, 8), (2, 1, 1, 1), (4, 3, 2, 5), (2, 4, 4, 64)],
                         ids=lambda s: "t%d-o%d-i%d-b%d" % s)
@pytest.mark.parametrize("transpose", [False, True], ids=["C", "CT"])
def test_bc_accumulate_vs_dense(project, storage, shape, transpose):
    """Y = spectrum of (dense block-circulant matrix) @ x, for C and C^T (W's block axes
    swapped through its strides, conj = 1)."""
    tokens, nout, nin, b = shape
    rng = np.random.default_rng(sum(shape) + transpose)
    W, W_in = _bc_kernel(rng, storage, nout, nin, b)
    # input blocks: nin for C, nout for C^T
    q = nout if transpose else nin
    p = nin if transpose else nout
    x_t = rng.standard_normal((tokens, q, b))
    X = to_storage(packed_rfft_oracle(x_t), storage)
    X_in = from_storage(X, storage)
    Y = np.full((tokens, p, b), 0x7FC0 if storage == "bfloat16" else np.nan, dtype=X.dtype)
    w_out, w_in, _ = elem_strides_3d(W)
    if transpose:
        w_out, w_in = w_in, w_out
    project.get("bc_accumulate", storage)((3,), (64,), (
        X, q * b, W, w_out, w_in, Y, p * b, tokens, p, q, b, int(transpose)))
    # oracle: time-domain signals whose spectra are exactly the stored values, dense product
    w_used = packed_irfft_oracle(W_in)
    x_used = packed_irfft_oracle(X_in).reshape(tokens, q * b)
    M = block_circulant_matrix_oracle(w_used)
    y_t = x_used @ (M if transpose else M.T)
    expected = packed_rfft_oracle(y_t.reshape(tokens, p, b))
    # per pair: sum over the q blocks of |W||X|, q + 3 roundings in the compute type
    Wc = unpack_to_complex(W_in)
    Xc = unpack_to_complex(X_in)
    if transpose:
        bound = np.einsum("oik,tok->tik", np.abs(Wc), np.abs(Xc))
    else:
        bound = np.einsum("oik,tik->tok", np.abs(Wc), np.abs(Xc))
    bound = pack_complex(bound * (1 + 1j), b)
    eps_c = float(np.finfo(STORAGE[storage][3]).eps)
    atol = ((q + 3) * eps_c * bound
            + tolerance(b, np.float64, float(np.max(row_norms(y_t)))) * math.sqrt(q))
    if storage in STORAGE_EPS:
        atol = atol + 0.5 * STORAGE_EPS[storage] * np.abs(expected) + 2.0**-24
    assert_close(from_storage(Y, storage), expected, atol, f"shape={shape}")


def elem_strides_3d(a: np.ndarray) -> tuple[int, int, int]:
    return tuple(st // a.itemsize for st in a.strides)


def test_bc_accumulate_strided_tokens(project):
    """Tokens farther apart than their blocks (x_row_stride, y_row_stride > blocks * b) and a
    kernel W stored transposed in memory; memory between tokens stays untouched."""
    tokens, nout, nin, b = 3, 2, 3, 16
    rng = np.random.default_rng(30)
    W, W_in = _bc_kernel(rng, "float64", nout, nin, b)
    W_t = np.ascontiguousarray(np.swapaxes(W, 0, 1))        # memory order (nin, nout, b)
    x_buf = rng.standard_normal((tokens, nin * b + 7))
    y_buf = rng.standard_normal((tokens, nout * b + 5))
    y_before = y_buf.copy()
    X_in = x_buf[:, :nin * b].reshape(tokens, nin, b).copy()
    project.get("bc_accumulate", "float64")((2,), (32,), (
        x_buf, nin * b + 7, W_t, b, nout * b, y_buf, nout * b + 5, tokens, nout, nin, b, 0))
    expected = np.zeros((tokens, nout, b))
    for i in range(nin):
        expected += complex_pair_product_oracle(W_in[None, :, i, :], X_in[:, None, i, :])
    assert_close(y_buf[:, :nout * b].reshape(tokens, nout, b), expected,
                 (nin + 3) * np.finfo(np.float64).eps * np.abs(expected).max() * 4)
    np.testing.assert_array_equal(y_buf[:, nout * b:], y_before[:, nout * b:])


# ---------------------------------------------------------------------------------------------
# The kernel contract, checked on the source text
# ---------------------------------------------------------------------------------------------
def _project_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(_cuda_dir().iterdir())
            if p.suffix in (".cu", ".cuh")}


def test_sources_keep_to_the_language_subset():
    """What g++ would accept but NVRTC or the contract would not: other includes, inline PTX,
    printf, cooperative groups, textures, half-precision atomics."""
    allowed = {"<cuda_fp16.h>", "<cuda_bf16.h>"}
    forbidden = [r"\basm\s*\(", r"\bprintf\s*\(", r"cooperative_groups", r"\btex[123]D\w*\s*\(",
                 r"\bsurf[123]D\w*\s*\(", r"atomic\w*\s*\(\s*\(?\s*(__half|__nv_bfloat16)"]
    import re

    problems = []
    for name, text in _project_sources().items():
        for lineno, line in enumerate(text.splitlines(), start=1):
            code = line.split("//", 1)[0]
            inc = re.match(r"\s*#\s*include\s*([<\"][^>\"]+[>\"])", code)
            if inc and inc.group(1) not in allowed and not inc.group(1).startswith('"'):
                problems.append(f"{name}:{lineno}: include {inc.group(1)}")
            if inc and inc.group(1).startswith('"') and inc.group(1).strip('"') not in \
                    _project_sources():
                problems.append(f"{name}:{lineno}: include of a non-project header {inc.group(1)}")
            for pattern in forbidden:
                if re.search(pattern, code):
                    problems.append(f"{name}:{lineno}: {code.strip()}")
    assert not problems, "outside the kernel contract's subset:\n" + "\n".join(problems)


def test_every_kernel_documents_its_parameters():
    """The comment block above each __global__ kernel names every parameter (the emulation
    and the backend call kernels by those documented signatures)."""
    import re

    missing = []
    kernel_re = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(")
    for name, text in _project_sources().items():
        lines = text.splitlines()
        for match in kernel_re.finditer(text):
            kernel = match.group(1)
            depth, i = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            params = [p.strip() for p in text[match.end():i - 1].split(",") if p.strip()]
            names = [re.findall(r"\w+", p)[-1] for p in params]
            # the comment block: contiguous // lines above the template/kernel line
            line_no = text.count("\n", 0, match.start())
            j = line_no - 1
            while j >= 0 and not lines[j].lstrip().startswith("//"):
                j -= 1                                   # skip the template<> line
            comment = []
            while j >= 0 and lines[j].lstrip().startswith("//"):
                comment.append(lines[j])
                j -= 1
            doc = "\n".join(comment)
            if not re.search(rf"\b{kernel}\b", doc):
                missing.append(f"{name}: {kernel}: no comment block naming the kernel")
            missing += [f"{name}: {kernel}: parameter {p!r} undocumented" for p in names
                        if not re.search(rf"\b{p}\b", doc)]
    assert not missing, "\n".join(missing)
