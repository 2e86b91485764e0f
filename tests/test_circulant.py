"""Circulant operators: dense oracles, numpy vs torch, autograd, PEFT C3A bridge, half precision,
torch.compile, bad input.

Tolerances.  ``y_i = sum_j circ(w_ij) x_j`` is computed by transforms of length ``b``, a
frequency-wise product summed over the ``n`` input blocks, and one inverse transform.  Each
stage has a normwise relative error of at most ``TOL_C * log2(b) * eps`` (the transform bound
used by ``oracles.tolerance``) or ``n * eps`` (the sum), applied to a product bounded by
``||circ(w_ij)||_2 ||x_j||_2 <= ||w_ij||_1 ||x_j||_2``.  So per output block::

    |err(y_i)| <= TOL_C * (log2(b) + n + 2) * eps * sum_j ||w_ij||_1 ||x_j||_2

which a layout or sign error exceeds by orders of magnitude.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import require

torch = require("torch")

import circfft  # noqa: E402
from circfft.nn import functional as F  # noqa: E402
from oracles import (TOL_C, assert_close, block_circulant_fold_oracle,  # noqa: E402
                     block_circulant_matrix_oracle, c3a_kernel_to_first_column,
                     circular_convolution_oracle, circular_correlation_oracle,
                     fft_relative_error, row_norms)
from _autograd_spy import saved_tensors  # noqa: E402

SHAPES = [(1, 1, 1), (1, 1, 8), (1, 1, 7), (2, 3, 4), (3, 2, 5), (1, 2, 2), (2, 1, 6),
          (2, 2, 16)]


# ---------------------------------------------------------------------------------------------
# Oracles (torch/numpy specific ones live here; the transform oracles are in oracles.py)
# ---------------------------------------------------------------------------------------------
def dense_loop(w):
    """Block-circulant matrix by explicit loops: W[i*b + r, j*b + s] = w[i, j, (r - s) % b]."""
    w = np.asarray(w, dtype=np.float64)
    m, n, b = w.shape
    D = np.zeros((m * b, n * b))
    for i in range(m):
        for j in range(n):
            for r in range(b):
                for s in range(b):
                    D[i * b + r, j * b + s] = w[i, j, (r - s) % b]
    return D


def bc_tolerance(w, x, dtype, transpose=False):
    """Per-output-block bound of the docstring, broadcast to the output's shape."""
    w = np.asarray(w, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    m, n, b = w.shape
    nx, ny = (m, n) if transpose else (n, m)
    eps = float(np.finfo(np.dtype(dtype)).eps)
    w1 = np.abs(w).sum(-1)                                      # (m, n)
    if transpose:
        w1 = w1.T                                               # (n, m): out block, in block
    xb = np.linalg.norm(x.reshape(x.shape[:-1] + (nx, b)), axis=-1)    # (..., nx)
    per_block = TOL_C * (max(1.0, math.log2(b)) + nx + 2) * eps * (xb @ w1.T)   # (..., ny)
    return np.repeat(per_block, b, axis=-1) + 1e-300


def kernel_grad_tolerance(g, x, b, dtype):
    """Bound for ``fold(g^T x)`` (the kernel gradient, summed over the T tokens) computed by
    transforms: per token the three transforms of a circular correlation of two blocks
    (``3 r sqrt(b) ||g_t|| ||x_t||``, r = `fft_relative_error`) and the sum over the tokens."""
    g = np.asarray(g, dtype=np.float64).reshape(-1, np.shape(g)[-1])
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    eps = float(np.finfo(np.dtype(dtype)).eps)
    pairs = float((row_norms(g) * row_norms(x)).sum())
    return math.sqrt(b) * (3 * fft_relative_error(b, dtype) + (len(x) + 2) * eps) * pairs


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


@pytest.fixture(params=[False, True], ids=["numba-views", "torch-fft"])
def fft_path(request):
    """The CPU kernels, and torch.fft with the reference primitives (the CUDA-without-CuPy
    route)."""
    with circfft.config(torch_fft=request.param):
        yield request.param


@pytest.fixture
def small_chunks():
    """Several chunks per call (rows not a multiple of the chunk)."""
    with circfft.config(chunk_elements=64):
        yield


# ---------------------------------------------------------------------------------------------
# Dense materialisers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_block_circulant_dense_matches_loop(shape, rng):
    w = rng.standard_normal(shape)
    expected = dense_loop(w)
    assert np.array_equal(circfft.block_circulant_dense(w), expected)
    got = circfft.block_circulant_dense(t64(w))
    assert isinstance(got, torch.Tensor) and np.array_equal(got.numpy(), expected)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_circulant_dense_matches_loop(n, rng):
    c = rng.standard_normal(n)
    expected = np.array([[c[(r - s) % n] for s in range(n)] for r in range(n)])
    assert np.array_equal(circfft.circulant_dense(c), expected)
    assert np.array_equal(circfft.circulant_dense(t64(c)).numpy(), expected)


def test_dense_gradients():
    w = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.block_circulant_dense, (w,))
    c = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.circulant_dense, (c,))


# ---------------------------------------------------------------------------------------------
# Products against the dense matrix (numpy) and numpy vs torch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_numpy_block_circulant_vs_dense(shape, transpose, dtype, rng):
    m, n, b = shape
    w = rng.standard_normal(shape).astype(dtype)
    x = rng.standard_normal((2, 3, (m if transpose else n) * b)).astype(dtype)
    y = circfft.block_circulant_matmul(w, x, transpose=transpose)
    assert y.dtype == dtype and y.shape == (2, 3, (n if transpose else m) * b)
    D = dense_loop(w)
    expected = x.astype(np.float64) @ (D if transpose else D.T)
    assert_close(y, expected, bc_tolerance(w, x, dtype, transpose))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_torch_matches_numpy(shape, transpose, dtype, rng, fft_path):
    m, n, b = shape
    w = rng.standard_normal(shape).astype(dtype)
    x = rng.standard_normal((5, (m if transpose else n) * b)).astype(dtype)
    y_np = circfft.block_circulant_matmul(w, x, transpose=transpose)
    y_t = circfft.block_circulant_matmul(torch.from_numpy(w), torch.from_numpy(x),
                                         transpose=transpose)
    assert isinstance(y_t, torch.Tensor) and y_t.dtype == torch.from_numpy(x).dtype
    assert_close(y_t.numpy(), y_np, 2 * bc_tolerance(w, x, dtype, transpose))


def test_torch_multichunk_threads_match_dense(rng, small_chunks, fft_path):
    w = rng.standard_normal((3, 2, 8))
    for transpose in (False, True):
        x = rng.standard_normal((37, (3 if transpose else 2) * 8))
        y = F.block_circulant_matmul(t64(w), t64(x), transpose=transpose)
        D = dense_loop(w)
        assert_close(y.numpy(), x @ (D if transpose else D.T),
                     bc_tolerance(w, x, np.float64, transpose))


@pytest.mark.parametrize("n", [1, 4, 6, 7, 16])
@pytest.mark.parametrize("transpose", [False, True])
def test_circulant_matmul_vs_convolution(n, transpose, rng):
    c = rng.standard_normal(n)
    x = rng.standard_normal((3, n))
    expected = (circular_correlation_oracle(c, x) if transpose
                else circular_convolution_oracle(c, x))
    tol = bc_tolerance(c.reshape(1, 1, n), x, np.float64)
    assert_close(circfft.circulant_matmul(c, x, transpose=transpose), expected, tol)
    got = circfft.circulant_matmul(t64(c), t64(x), transpose=transpose)
    assert_close(got.numpy(), expected, tol)


@pytest.mark.parametrize("transpose", [False, True])
def test_circulant_diagonal_vs_dense(transpose, rng, fft_path):
    m, n, b = 2, 3, 4
    a, g = rng.standard_normal(m * b), rng.standard_normal(n * b)
    w = rng.standard_normal((m, n, b))
    x = rng.standard_normal((4, (m if transpose else n) * b))
    M = np.diag(a) @ dense_loop(w) @ np.diag(g)
    expected = x @ (M if transpose else M.T)
    xs = x * (a if transpose else g)
    tol = bc_tolerance(w, xs, np.float64, transpose) * np.abs(g if transpose else a)
    assert_close(circfft.circulant_diagonal_matmul(a, w, g, x, transpose=transpose),
                 expected, tol)
    got = circfft.circulant_diagonal_matmul(t64(a), t64(w), t64(g), t64(x), transpose=transpose)
    assert_close(got.numpy(), expected, tol)


def test_structured_impulses_give_dense_columns(rng):
    w = rng.standard_normal((2, 3, 4))
    D = dense_loop(w)
    eye = np.eye(12)
    assert_close(circfft.block_circulant_matmul(w, eye), D.T, 1e-13)
    assert_close(F.block_circulant_matmul(t64(w), t64(eye)).numpy(), D.T, 1e-13)
    ones = np.ones((1, 12))
    expected = np.repeat(w.sum(-1) @ np.ones(3), 4)[None]      # row sums of each block
    assert_close(circfft.block_circulant_matmul(w, ones), expected, 1e-13)


def test_thread_count_restored(small_chunks):
    before = torch.get_num_threads()
    F.block_circulant_matmul(torch.randn(2, 2, 8), torch.randn(40, 16))
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------------------------
# Non-contiguous and expanded operands
# ---------------------------------------------------------------------------------------------
def _layouts(lib, a):
    """Views of ``a`` (2-d, float64 numpy) with the same values: transposed storage, a strided
    slice of a wider array with an offset, and (for a single row repeated) a stride-0
    broadcast.  numpy views are read-only where numpy makes them so; torch views are views."""
    T, d = a.shape
    if lib == "numpy":
        wide = np.full((T + 1, 2 * d + 1), np.nan)
        wide[1:, 1::2] = a
        yield "transposed", np.asfortranarray(a)
        yield "strided", wide[1:, 1::2]
        if (a == a[:1]).all():
            yield "broadcast", np.broadcast_to(a[:1], a.shape)
    else:
        t = torch.from_numpy(a)
        wide = torch.full((T + 1, 2 * d + 1), float("nan"), dtype=torch.float64)
        wide[1:, 1::2] = t
        yield "transposed", t.t().contiguous().t()
        yield "strided", wide[1:, 1::2]
        if (a == a[:1]).all():
            yield "broadcast", t[:1].expand(T, d)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("op", ["block", "circulant", "diagonal"])
@pytest.mark.parametrize("transpose", [False, True])
def test_non_contiguous_and_expanded_operands(lib, op, transpose, rng, fft_path):
    """Every operand as a transposed-storage, strided (offset) or stride-0 view gives the
    contiguous copy's result bit for bit, and nothing is written into any operand."""
    m, n, b = 2, 3, 4
    d_x = (m if transpose else n) * b
    w = rng.standard_normal((m, n, b))
    a, g = rng.standard_normal(m * b), rng.standard_normal(n * b)
    c = rng.standard_normal(d_x)
    for rows in (rng.standard_normal((5, d_x)), np.repeat(rng.standard_normal((1, d_x)), 5, 0)):
        conv = (lambda v: v) if lib == "numpy" else t64

        def call(xv, wv=conv(w), av=conv(a), gv=conv(g), cv=conv(c)):
            if op == "block":
                return circfft.block_circulant_matmul(wv, xv, transpose=transpose)
            if op == "circulant":
                return circfft.circulant_matmul(cv, xv, transpose=transpose)
            return circfft.circulant_diagonal_matmul(av, wv, gv, xv, transpose=transpose)

        if op == "circulant":
            rows = rows[:, :d_x]
        want = call(conv(rows.copy()))
        for name, xv in _layouts(lib, rows):
            before = np.array(xv, copy=True) if lib == "numpy" else xv.clone()
            got = call(xv)
            if lib == "numpy":
                np.testing.assert_array_equal(got, want, err_msg=name)
                np.testing.assert_array_equal(xv, before, err_msg=f"{name}: x written")
            else:
                torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
                assert torch.equal(xv, before), f"{name}: x written"
        # the kernel and the diagonals as views too
        wv = w.transpose(1, 0, 2).copy().transpose(1, 0, 2)       # permuted storage
        ev = np.broadcast_to(a[:1], a.shape) if lib == "numpy" else t64(a[:1]).expand(m * b)
        if lib == "torch":
            wv = t64(w.transpose(1, 0, 2)).permute(1, 0, 2)
        ref = call(conv(rows.copy()), wv=conv(w), av=conv(np.full(m * b, a[0])))
        np.testing.assert_array_equal(np.asarray(call(conv(rows.copy()), wv=wv,
                                                      av=ev)), np.asarray(ref))


def test_torch_gradients_through_views_reach_the_viewed_tensors(fft_path):
    """Autograd through strided / expanded operands: the gradients accumulate into the viewed
    tensors exactly as through contiguous copies of the views."""
    gen = torch.Generator().manual_seed(4)
    wide = torch.randn(6, 25, dtype=torch.float64, generator=gen)
    row = torch.randn(1, 12, dtype=torch.float64, generator=gen)
    w_t = torch.randn(3, 2, 4, dtype=torch.float64, generator=gen)     # stored (n, m, b)
    s_a = torch.randn(1, dtype=torch.float64, generator=gen)
    s_g = torch.randn(1, dtype=torch.float64, generator=gen)
    gy = torch.randn(6, 8, dtype=torch.float64, generator=gen)
    grads = []
    for contiguous in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (wide, row, w_t, s_a, s_g)]
        xw, xr, wk, sa, sg = leaves
        for xv in (xw[:, 1::2][:, :12], xr.expand(6, 12)):
            ops = [xv, wk.permute(1, 0, 2), sa.expand(8), sg.expand(12)]
            if contiguous:
                ops = [v.contiguous() for v in ops]
            x, w, a, g = ops
            y = F.circulant_diagonal_matmul(a, w, g, x)
            (y * gy).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_gradcheck_block_circulant(shape, transpose, fft_path):
    m, n, b = shape
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, (m if transpose else n) * b, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w_, x_: F.block_circulant_matmul(w_, x_, transpose=transpose), (w, x))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 1, 6), (2, 1, 5)])
def test_gradcheck_circulant_diagonal(shape, transpose, fft_path):
    m, n, b = shape
    a = torch.randn(m * b, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n * b, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, (m if transpose else n) * b, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *args: F.circulant_diagonal_matmul(*args, transpose=transpose), (a, w, g, x))


def test_gradcheck_subsets_and_chunks(small_chunks):
    """Each gradient alone (the others not requested), over several threaded chunks."""
    a = torch.randn(8, dtype=torch.float64)
    g = torch.randn(12, dtype=torch.float64)
    w = torch.randn(2, 3, 4, dtype=torch.float64)
    x = torch.randn(9, 12, dtype=torch.float64)
    for i in range(4):
        args = [t.clone().requires_grad_(k == i) for k, t in enumerate((a, w, g, x))]
        assert torch.autograd.gradcheck(
            lambda *ar: F.circulant_diagonal_matmul(*ar), args)


def test_gradcheck_circulant_matmul():
    c = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    for transpose in (False, True):
        assert torch.autograd.gradcheck(
            lambda c_, x_: F.circulant_matmul(c_, x_, transpose=transpose), (c, x))


def test_only_the_packed_spectrum_is_saved():
    w = torch.randn(4, 4, 16, requires_grad=True)
    x = torch.randn(3, 10, 64, requires_grad=True)
    with saved_tensors() as saved:
        y = F.block_circulant_matmul(w, x)
    activation = [t for t in saved if t.numel() >= x.numel()]
    assert len(activation) == 1 and activation[0].numel() == x.numel()
    assert all(t.numel() <= w.numel() for t in saved if t is not activation[0])
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


def test_opcheck_block_circulant_ops():
    ops = torch.ops.circfft
    w = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    a = torch.randn(8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(12, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.block_circulant.default, (x, w, None, None, False))
    torch.library.opcheck(ops.block_circulant.default, (x, w, g, a, False))
    xt = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.block_circulant.default, (xt, w, a, g, True))
    _, spec = ops.block_circulant(x.detach(), w.detach(), g.detach(), a.detach(), False)
    gy = torch.randn(5, 8, dtype=torch.float64)
    torch.library.opcheck(ops.block_circulant_backward.default,
                          (gy, spec, w.detach(), x.detach(), g.detach(), a.detach(), False,
                           True, True, True, True))
    w1 = torch.randn(1, 1, 8, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.block_circulant.default, (x1, w1, None, None, True))


# ---------------------------------------------------------------------------------------------
# PEFT C3A bridge (docs/operators.rst, "Kernels from PEFT's C3A")
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 3, 8), (1, 1, 16), (2, 4, 6)])
def test_c3a_equivalence(shape):
    c3a = require("peft.tuners.c3a.utils")
    k = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, shape[1] * shape[2], dtype=torch.float64, requires_grad=True)
    y_ref = c3a.BlockCircularConvolution.apply(x, k) / x.size(-1)
    y = F.block_circulant_matmul(F.c3a_to_block_circulant(k), x)
    # both against the dense oracle of C3A's map (kernel reindexed, 1/d_in), each within the
    # float64 bound of a block-circulant product by transforms (not against each other)
    d_in = shape[1] * shape[2]
    w = c3a_kernel_to_first_column(k.detach().numpy()) / d_in
    M = block_circulant_matrix_oracle(w)
    x64 = x.detach().numpy()
    atol = bc_tolerance(w, x64, np.float64)
    assert_close(y.detach().numpy(), x64 @ M.T, atol, "circfft")
    assert_close(y_ref.detach().numpy(), x64 @ M.T, atol, "PEFT C3A")
    gy = torch.randn_like(y)
    (gk_ref,) = torch.autograd.grad(y_ref, k, gy)
    gx, gk = torch.autograd.grad(y, (x, k), gy)
    # d/dk: the kernel gradient of the first-column kernel, reindexed (an involution), / d_in
    gy64 = gy.numpy()
    gk_oracle = c3a_kernel_to_first_column(block_circulant_fold_oracle(gy64.T @ x64,
                                                                       shape[2])) / d_in
    katol = kernel_grad_tolerance(gy64, x64, shape[2], np.float64) / d_in
    assert_close(gk.numpy(), gk_oracle, katol, "circfft kernel gradient")
    assert_close(gk_ref.numpy(), gk_oracle, katol, "PEFT kernel gradient")
    # C3A's hand-written input gradient (peft 0.21) is not the adjoint of its forward map
    # (torch.autograd.gradcheck fails on it), so only ours is checked, against the oracle.
    assert_close(gx.numpy(), gy64 @ M, bc_tolerance(w, gy64, np.float64, transpose=True),
                 "circfft input gradient")


# ---------------------------------------------------------------------------------------------
# Half precision, compile, CUDA
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hdtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision(hdtype, rng):
    """Inputs in half precision, computed in float32, result rounded once to the half dtype:
    |y - y_exact| <= bc_tolerance(float32) + u * |y_exact| (u = eps/2 of the half dtype)."""
    w = torch.randn(2, 3, 16).to(hdtype)
    x = torch.randn(7, 48).to(hdtype)
    y = F.block_circulant_matmul(w, x)
    assert y.dtype == hdtype
    exact = x.double().numpy() @ dense_loop(w.double().numpy()).T
    u = torch.finfo(hdtype).eps / 2
    tol = bc_tolerance(w.double().numpy(), x.double().numpy(), np.float32)
    assert_close(y.double().numpy(), exact, (tol + u * np.abs(exact)) * (1 + u))
    wr = w.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    F.block_circulant_matmul(wr, xr).float().sum().backward()
    assert wr.grad.dtype == hdtype and xr.grad.dtype == hdtype
    # gradients of sum(y): g = 1 (exact in half); computed in float32 and rounded once
    g64 = np.ones((7, 32))
    w64, x64 = w.double().numpy(), x.double().numpy()
    gx = g64 @ dense_loop(w64)
    tol_x = bc_tolerance(w64, g64, np.float32, transpose=True)
    assert_close(xr.grad.double().numpy(), gx, (tol_x + u * np.abs(gx)) * (1 + u), "grad x")
    gw = block_circulant_fold_oracle(g64.T @ x64, 16)
    tol_w = kernel_grad_tolerance(g64, x64, 16, np.float32)
    assert_close(wr.grad.double().numpy(), gw, (tol_w + u * np.abs(gw)) * (1 + u), "grad w")


def test_compiled_matches_eager():
    def f(a, w, g, x):
        y = F.circulant_diagonal_matmul(a, w, g, x)
        z = F.block_circulant_matmul(w, y, transpose=True)
        return (z * z).sum() + F.circulant_matmul(g, x).sum()

    args = [torch.randn(8, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64),
            torch.randn(12, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)]
    args = [t.requires_grad_() for t in args]
    eager = f(*args)
    g_eager = torch.autograd.grad(eager, args)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    comp = compiled(*args)
    g_comp = torch.autograd.grad(comp, args)
    # the same kernels on the same inputs: the compiled graph gives the eager result exactly
    torch.testing.assert_close(comp, eager, rtol=0, atol=0)
    for p, q in zip(g_comp, g_eager):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_no_grad_and_inference_mode():
    w, x = torch.randn(2, 2, 8, requires_grad=True), torch.randn(3, 16)
    with torch.no_grad():
        assert not F.block_circulant_matmul(w, x).requires_grad
    with torch.inference_mode():
        y = F.block_circulant_matmul(w, x)
    w64, x64 = w.detach().double().numpy(), x.double().numpy()
    assert_close(y.numpy(), x64 @ dense_loop(w64).T, bc_tolerance(w64, x64, np.float32))


@pytest.mark.gpu
def test_cuda_matches_oracle():
    w = torch.randn(2, 3, 8, dtype=torch.float64)
    x = torch.randn(6, 24, dtype=torch.float64)
    y = F.block_circulant_matmul(w.cuda(), x.cuda())
    assert y.device.type == "cuda"
    assert_close(y.cpu().numpy(), x.numpy() @ dense_loop(w.numpy()).T,
                 bc_tolerance(w.numpy(), x.numpy(), np.float64))
    wc = w.cuda().requires_grad_()
    xc = x.cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda p, q: F.block_circulant_matmul(p, q), (wc, xc))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_errors_name_the_shapes(lib):
    mk = (lambda *s: np.zeros(s)) if lib == "numpy" else (lambda *s: torch.zeros(s, dtype=torch.float64))
    w = mk(2, 3, 4)
    with pytest.raises(ValueError, match=r"block size b=4 .* does not divide x.shape\[-1\]=10"):
        circfft.block_circulant_matmul(w, mk(5, 10))
    with pytest.raises(ValueError, match=r"\(5, 8\).*expects 3 input block"):
        circfft.block_circulant_matmul(w, mk(5, 8))
    with pytest.raises(ValueError, match=r"expects 2 output block"):
        circfft.block_circulant_matmul(w, mk(5, 12), transpose=True)
    with pytest.raises(ValueError, match=r"w must have shape \(d_out/b, d_in/b, b\), got shape \(2, 12\)"):
        circfft.block_circulant_matmul(mk(2, 12), mk(5, 12))
    with pytest.raises(ValueError, match=r"a must have shape \(8,\)"):
        circfft.circulant_diagonal_matmul(mk(7), w, mk(12), mk(5, 12))
    with pytest.raises(ValueError, match=r"g must have shape \(12,\)"):
        circfft.circulant_diagonal_matmul(mk(8), w, mk(8), mk(5, 12))
    with pytest.raises(ValueError, match=r"c must have shape \(n,\)"):
        circfft.circulant_matmul(mk(2, 2), mk(4))
    with pytest.raises(ValueError, match=r"x has shape \(3, 5\) but c of shape \(4,\)"):
        circfft.circulant_matmul(mk(4), mk(3, 5))


def test_dtype_family_device_mismatch():
    w = np.zeros((1, 2, 4))
    with pytest.raises(TypeError, match=r"x has dtype float32 \(shape \(3, 8\)\) but w has dtype float64"):
        circfft.block_circulant_matmul(w, np.zeros((3, 8), np.float32))
    with pytest.raises(TypeError, match="same library"):
        circfft.block_circulant_matmul(w, torch.zeros(3, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        circfft.block_circulant_matmul(w.astype(np.int64), np.zeros((3, 8), np.int64))
    wt = torch.zeros(1, 2, 4)
    with pytest.raises(TypeError, match=r"has dtype torch.float64 .* but w has dtype torch.float32"):
        F.block_circulant_matmul(wt, torch.zeros(3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x \(shape \(3, 8\)\) is on device meta but w"):
        F.block_circulant_matmul(wt, torch.zeros(3, 8, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        F.block_circulant_matmul(w, np.zeros((3, 8)))


# ---------------------------------------------------------------------------------------------
# bench --ops helpers (the full benchmark runs each case in fresh processes; too slow here)
# ---------------------------------------------------------------------------------------------
def test_bench_ops_case_options_and_table():
    import argparse

    from circfft._cli import bench_ops as _bench_ops

    row = _bench_ops.run_case("circfft", 64, 16, 32, 1, None, "time")
    assert row["time_s"] > 0 and row["params"] == 4 * 4 * 16
    lora = _bench_ops.run_case("lora-4", 64, 0, 32, 1, None, "time")
    assert lora["params"] == 2 * 4 * 64
    rows = [dict(row, peak_above_inputs=3 * 32 * 64 * 4),
            dict(row, impl="c3a", time_s=4 * row["time_s"], peak_above_inputs=10 * 32 * 64 * 4),
            dict(lora, peak_above_inputs=2 * 32 * 64 * 4)]
    table = _bench_ops.format_table(rows)
    assert "| 64 | 16 | circfft |" in table and "time ok, memory ok" in table
    assert "3.00" in table and "0.300" in table
    cfg = _bench_ops._options(argparse.Namespace(quick=True, repeat=None,
                                                 extra_argv=["--dims", "128", "--tokens", "64"]))
    assert cfg["dims"] == [128] and cfg["tokens"] == 64 and cfg["repeat"] == 2
    with pytest.raises(SystemExit):
        _bench_ops._options(argparse.Namespace(extra_argv=["--bogus"]))
