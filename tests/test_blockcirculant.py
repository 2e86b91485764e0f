"""The block-circulant factorisation (``circfft._blockcirculant``) and every executor of it.

One algorithm, several primitives: the reference (complex spectra, any family), the CPU slot
layout and pair products (torch CPU tensors, numba), and the GPU primitives (packed rows, the
fused ``bc_accumulate`` kernel, a batched matmul for the kernel gradient), the last run here on
CPU memory through the CUDA emulation.  Each is checked in float32 and float64 against dense
float64 oracles (``oracles.block_circulant_matrix_oracle`` / ``block_circulant_fold_oracle``):
forward, transpose and every gradient (input, kernel, both diagonals), over several row chunks.
The numba slot-layout kernels are checked against the plain maps, and the GPU primitives issue
the same launches for 64 rows as for 8192.

Tolerances.  An output block is a sum over ``nx`` input blocks of products computed by length-b
transforms, so (as in ``test_circulant.py``) its error is at most
``TOL_C (log2 b + nx + 2) eps sum_j ||w_ij||_1 ||u_j||_2``.  A kernel-gradient entry sums over
the ``T`` rows the correlation of two transformed blocks: at most
``TOL_C (2 log2 b + T + 2) eps sum_t ||g_t,o||_2 ||u_t,i||_2`` (the transforms of both blocks,
the recursive sum over rows, the inverse).  The diagonal gradients are row sums of products of
such quantities with ``x`` or ``grad y``, bounded the same way with ``T`` terms.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import circfft  # noqa: E402
from circfft import _blockcirculant as bc  # noqa: E402
from circfft.backends import get_backend  # noqa: E402
from circfft.backends._array_ops import ops_for_family  # noqa: E402
from oracles import (TOL_C, assert_close, block_circulant_fold_oracle,  # noqa: E402
                     block_circulant_matrix_oracle)

CASES = [(1, 1, 8), (1, 1, 7), (2, 3, 4), (3, 2, 5), (2, 2, 16), (1, 3, 6)]
T = 13


# ---------------------------------------------------------------------------------------------
# Dense oracle and bounds
# ---------------------------------------------------------------------------------------------
def dense_results(w, x, pre, post, gy, transpose):
    """y and every gradient from the dense float64 matrix."""
    D = block_circulant_matrix_oracle(w)
    M = D.T if transpose else D                      # y-side x x-side
    one_x, one_y = np.ones(x.shape[1]), np.ones(gy.shape[1])
    p = one_x if pre is None else pre
    q = one_y if post is None else post
    u = x * p
    z = u @ M.T                                      # C (pre x)
    y = z * q
    gz = gy * q
    du = gz @ M
    G = (gz.T @ u) if not transpose else (u.T @ gz)  # d_out x d_in
    return {"y": y, "dx": du * p, "dw": block_circulant_fold_oracle(G, w.shape[2]),
            "dpre": (x * du).sum(0), "dpost": (gy * z).sum(0)}


def bounds(w, x, pre, post, gy, transpose, dtype):
    """The per-element bounds of the module docstring, for every result of `dense_results`."""
    m, n, b = w.shape
    rows = x.shape[0]
    nx, ny = (m, n) if transpose else (n, m)
    eps = float(np.finfo(dtype).eps)
    L = max(1.0, math.log2(b))
    p = np.ones(x.shape[1]) if pre is None else pre
    q = np.ones(gy.shape[1]) if post is None else post
    w1 = np.abs(w).sum(-1)                            # (m, n)
    w1 = w1.T if transpose else w1                    # (ny, nx)
    ub = np.linalg.norm((x * p).reshape(rows, nx, b), axis=-1)   # (T, nx)
    gb = np.linalg.norm((gy * q).reshape(rows, ny, b), axis=-1)  # (T, ny)
    fwd = TOL_C * (L + nx + 2) * eps
    z_tol = np.repeat(fwd * (ub @ w1.T), b, -1)                  # C (pre x), per element
    du_tol = np.repeat(fwd * (gb @ w1), b, -1)                   # C^T (post gy)
    corr = TOL_C * (2 * L + rows + 2) * eps
    out_b, in_b = (ub, gb) if transpose else (gb, ub)
    exp = dense_results(w, x, pre, post, gy, transpose)
    z = exp["y"] / np.where(q == 0, 1, q)
    du = exp["dx"] / np.where(p == 0, 1, p)
    return {"y": z_tol * np.abs(q), "dx": du_tol * np.abs(p),
            "dw": corr * np.einsum("to,ti->oi", out_b, in_b)[:, :, None],
            "dpre": (np.abs(x) * du_tol).sum(0) + rows * eps * np.abs(x * du).sum(0),
            "dpost": (np.abs(gy) * z_tol).sum(0) + rows * eps * np.abs(gy * z).sum(0)}


def make_inputs(shape, transpose, diag, dtype, rows=T, seed=0):
    rng = np.random.default_rng(seed)
    m, n, b = shape
    nx, ny = (m, n) if transpose else (n, m)
    w = rng.standard_normal(shape)
    x = rng.standard_normal((rows, nx * b))
    x[0] = 0.0                                        # structured rows: zeros, a constant,
    x[1] = 1.0                                        # an impulse, integers
    x[2] = 0.0
    x[2, b // 2] = 1.0
    x[3] = np.arange(nx * b) % 5 - 2
    gy = rng.standard_normal((rows, ny * b))
    gy[4] = 1.0
    pre = rng.standard_normal(nx * b) if diag else None
    post = rng.standard_normal(ny * b) if diag else None
    cast = (lambda a: None if a is None else a.astype(dtype))
    return tuple(cast(a) for a in (w, x, pre, post, gy))


# ---------------------------------------------------------------------------------------------
# Running the algorithm with given primitives
# ---------------------------------------------------------------------------------------------
def run(make_prims, ops, arrays, transpose, ranges_of, save_spec=True):
    """forward_rows over the ranges, then backward_rows for every gradient; float64 results."""
    w, x, pre, post, gy = arrays
    g = bc.Geometry(w.shape, transpose)
    p = make_prims(g)
    Tn = int(x.shape[0])
    ranges = ranges_of(Tn)
    y = ops.empty((Tn, g.ny * g.b), x.dtype, x)
    spec = p.new_spectrum(Tn, g.nx) if save_spec else None
    K = p.kernel(w, transpose)
    pv, qv = p.vector(pre), p.vector(post)
    for t0, t1 in ranges:
        bc.forward_rows(p, g, K, x, pv, qv, y, spec, t0, t1)
    dx = ops.empty((Tn, g.nx * g.b), x.dtype, x)
    out = bc.Gradients(p, g, dx, True, pre is not None, post is not None)
    Kb = p.kernel(w, not transpose)
    for t0, t1 in ranges:
        bc.backward_rows(p, g, K, Kb, gy, x, pv, qv, spec, out, t0, t1)
    res = {"y": y, "dx": dx, "dw": p.kernel_grad(out.P, w)}
    if pre is not None:
        res["dpre"], res["dpost"] = out.dpre, out.dpost
    return {k: _f64(v) for k, v in res.items()}


def _f64(a):
    if isinstance(a, torch.Tensor):
        return a.detach().to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def check(got, arrays, transpose, dtype):
    w, x, pre, post, gy = (None if a is None else a.astype(np.float64) for a in arrays)
    exp = dense_results(w, x, pre, post, gy, transpose)
    tol = bounds(w, x, pre, post, gy, transpose, dtype)
    for key, value in got.items():
        assert_close(value, exp[key], tol[key] + 1e-300, key)


def chunks(step):
    return lambda Tn: [(t0, min(Tn, t0 + step)) for t0 in range(0, Tn, step)]


def whole(Tn):
    return [(0, Tn)] if Tn else []


def torchify(arrays):
    return tuple(None if a is None else torch.from_numpy(a.copy()) for a in arrays)


# ---------------------------------------------------------------------------------------------
# Executors against the dense oracle
# ---------------------------------------------------------------------------------------------
PARAMS = [pytest.param(s, t, d, id=f"{s}-{'T' if t else 'N'}-{'diag' if d else 'plain'}")
          for s in CASES for t in (False, True) for d in (False, True)]


@pytest.mark.parametrize("shape,transpose,diag", PARAMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_reference_primitives_numpy(shape, transpose, diag, dtype):
    arrays = make_inputs(shape, transpose, diag, dtype)
    be = get_backend("numpy")
    got = run(lambda g: bc.ReferencePrimitives(be, g, np.dtype(dtype), arrays[1]),
              ops_for_family("numpy"), arrays, transpose, whole)
    check(got, arrays, transpose, dtype)


@pytest.mark.parametrize("shape,transpose,diag", PARAMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cpu_executor(shape, transpose, diag, dtype):
    """The CPU primitives (slot layout, or pair products for one block), in chunks of 4 rows."""
    from circfft.backends._torch_cpu import CpuPairPrimitives, CpuSlotPrimitives

    arrays = make_inputs(shape, transpose, diag, dtype)
    tarrays = torchify(arrays)
    cls = CpuPairPrimitives if shape[:2] == (1, 1) else CpuSlotPrimitives
    got = run(lambda g: cls(g, tarrays[1].dtype, 4), ops_for_family("torch"), tarrays,
              transpose, chunks(4))
    check(got, arrays, transpose, dtype)


@pytest.mark.parametrize("shape,transpose,diag", PARAMS[::3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_reference_primitives_torch_fft(shape, transpose, diag, dtype):
    """Reference primitives on tensors with torch.fft transforms: the CUDA-without-CuPy route."""
    arrays = make_inputs(shape, transpose, diag, dtype)
    tarrays = torchify(arrays)
    be = get_backend("torch")
    with circfft.config(torch_fft=True):
        got = run(lambda g: bc.ReferencePrimitives(be, g, tarrays[1].dtype, tarrays[1]),
                  ops_for_family("torch"), tarrays, transpose, chunks(5))
    check(got, arrays, transpose, dtype)


needs_gxx = pytest.mark.usefixtures("gxx")      # skipped without g++ >= 12, failed under CI


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    from cuda_emulation.kernel_set import build_kernels

    return build_kernels(tmp_path_factory.mktemp("bc_emu"))


@needs_gxx
@pytest.mark.cuda_emulated
@pytest.mark.parametrize("family", ["torch", "numpy"])
@pytest.mark.parametrize("shape,transpose,diag", PARAMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gpu_primitives_emulated(emulated, family, shape, transpose, diag, dtype):
    """The GPU primitives on CPU memory: the real kernels (emulated), all rows at once, on
    tensors (the torch executor) and arrays (what the cupy backend runs)."""
    from circfft.backends._cuda_circulant import CudaPrimitives
    from cuda_emulation.kernel_set import EmulatedKernelSet

    arrays = make_inputs(shape, transpose, diag, dtype)
    data = torchify(arrays) if family == "torch" else arrays
    ks = EmulatedKernelSet(emulated)
    got = run(lambda g: CudaPrimitives(ks, g, data[1].dtype, data[1]), ops_for_family(family),
              data, transpose, whole)
    check(got, arrays, transpose, dtype)


@needs_gxx
@pytest.mark.cuda_emulated
def test_gpu_primitives_half_storage(emulated):
    """bfloat16/float16 rows: spectra and products in float32, the output stored in half."""
    from circfft.backends._cuda_circulant import CudaPrimitives
    from cuda_emulation.kernel_set import EmulatedKernelSet
    from oracles import STORAGE_EPS

    arrays = make_inputs((2, 3, 8), False, True, np.float32)
    for hdtype, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        data = tuple(None if a is None else torch.from_numpy(a.copy()).to(hdtype)
                     for a in arrays)
        ks = EmulatedKernelSet(emulated)
        got = run(lambda g: CudaPrimitives(ks, g, hdtype, data[1]), ops_for_family("torch"),
                  data, False, whole)
        exact = tuple(None if a is None else _f64(a) for a in data)
        exp = dense_results(*exact, False)
        tol = bounds(*exact, False, np.float32)
        u = STORAGE_EPS[name]
        assert_close(got["y"], exp["y"], tol["y"] + u * np.abs(exp["y"]), f"y {name}")


# ---------------------------------------------------------------------------------------------
# The slot layout
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b", [1, 2, 5, 8, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_slot_kernels_match_reference_maps(b, dtype):
    from circfft.backends._numba_circulant import from_slots, to_slots

    rng = np.random.default_rng(b)
    H = rng.standard_normal((300, 3, b)).astype(dtype)          # several row tiles
    ops = ops_for_family("numpy")
    S = bc.slot_count(b)
    expected = np.full((S, 300, 6), np.nan, dtype)
    bc.slots_from_packed(H, expected, ops)
    got = np.full_like(expected, np.nan)
    to_slots(H, got)
    assert np.array_equal(got, expected)
    back = np.full_like(H, np.nan)
    bc.packed_from_slots(expected, back, ops)
    assert np.array_equal(back, H)
    back2 = np.full_like(H, np.nan)
    from_slots(expected, back2)
    assert np.array_equal(back2, H)


def test_slot_matrices_are_the_complex_products():
    """A slot row times M[k] is the complex product W_k X_k, for every frequency."""
    rng = np.random.default_rng(7)
    m, n, b = 2, 3, 6
    Wp = rng.standard_normal((m, n, b))
    X = rng.standard_normal((4, n, b))
    ops = ops_for_family("numpy")
    S = bc.slot_count(b)
    sl = np.empty((S, 4, 2 * n))
    bc.slots_from_packed(X, sl, ops)
    Y = np.empty((4, m, b))
    bc.packed_from_slots(sl @ bc.slot_matrices(Wp, ops), Y, ops)
    Wc = _complex(Wp)
    Xc = _complex(X)
    expected = np.einsum("oif,tif->tof", Wc, Xc)
    got = _complex(Y)
    assert_close(got.real, expected.real, 1e-12)
    assert_close(got.imag, expected.imag, 1e-12)


def _complex(P):
    """Packed rows (..., b) -> complex (..., b//2+1), by explicit slots."""
    b = P.shape[-1]
    Z = P[..., : b // 2 + 1].astype(complex)
    for k in range(1, (b + 1) // 2):
        Z[..., k] += 1j * P[..., b - k]
    return Z


# ---------------------------------------------------------------------------------------------
# Launch counts: a constant number per call, whatever the number of rows
# ---------------------------------------------------------------------------------------------
#: aten operations that only make views or allocate: no kernel launch on a GPU.
_NO_LAUNCH = ("view", "slice", "reshape", "permute", "transpose", "expand", "alias", "select",
              "squeeze", "detach", "empty", "as_strided", "aten.t.", "unfold", "lift_fresh")


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the aten operations that launch work (copies, arithmetic, matmuls)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not any(k in name for k in _NO_LAUNCH):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@needs_gxx
@pytest.mark.cuda_emulated
@pytest.mark.parametrize("diag", [False, True])
def test_gpu_launches_do_not_grow_with_rows(emulated, diag):
    """Forward plus every gradient at 64 and at 8192 rows: the same kernel launches and the
    same torch operations (each at least one launch on a GPU), at most a small constant."""
    from circfft.backends._cuda_circulant import CudaPrimitives
    from cuda_emulation.kernel_set import EmulatedKernelSet

    counts = []
    for rows in (64, 8192):
        arrays = torchify(make_inputs((1, 2, 8), False, diag, np.float32, rows=rows))
        ks = EmulatedKernelSet(emulated, sm_count=2)
        with _CountOps() as mode:
            run(lambda g: CudaPrimitives(ks, g, torch.float32, arrays[1]),
                ops_for_family("torch"), arrays, False, whole)
        counts.append((list(ks.launches), list(mode.ops)))
    (k64, t64), (k8k, t8k) = counts
    assert k64 == k8k and t64 == t8k
    assert len(k64) <= 12 and len(t64) <= 48, (k64, t64)
    assert k64.count(("bc_accumulate", "float32")) == 2 + (1 if diag else 0)
