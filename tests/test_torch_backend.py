"""The torch backend: rdfft/irdfft on tensors, autograd without saved buffers, in-place semantics,
half precision, registered custom ops (opcheck), torch.compile, and the torch.fft fallback path.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require

torch = require("torch")

import circfft  # noqa: E402
import circfft.backends.torch_backend as tb  # noqa: E402
from circfft.nn import functional as F  # noqa: E402
from oracles import (assert_close, complex_pair_product_oracle,  # noqa: E402
                     dft_matrix_packed, full_spectrum_norm, packed_irfft_oracle,
                     packed_rfft_oracle, round_trip_tolerance, row_norms, tolerance,
                     unit_roundoff)
from _autograd_spy import saved_tensors  # noqa: E402

NORMS = (None, "ortho", "forward")
LENGTHS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 64)
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _scale(n, norm, forward):
    if norm == "ortho":
        return 1 / math.sqrt(n)
    return 1 / n if (norm == "forward") == forward else 1.0


def _run_python(code: str) -> None:
    """Run ``code`` in a fresh interpreter that imports this checkout's circfft."""
    root = str(Path(circfft.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.fixture(params=[False, True], ids=["numba-views", "torch-fft"])
def fft_path(request):
    """Run a test on the CPU numba path and on the torch.fft path (the CUDA fallback)."""
    with circfft.config(torch_fft=request.param):
        yield request.param


def test_import_circfft_does_not_import_torch():
    code = ("import sys, circfft, numpy as np; circfft.rdfft(np.ones(8)); "
            "circfft.block_circulant_matmul(np.ones((1, 1, 4)), np.ones(4)); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "import circfft.nn; assert 'torch' in sys.modules")
    _run_python(code)


def test_backend_registered():
    x = torch.ones(4)
    assert circfft.backends.get_backend("torch").family == "torch"
    assert isinstance(circfft.rdfft(x), torch.Tensor)


# ---------------------------------------------------------------------------------------------
# Values against the numpy.fft oracle
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("norm", NORMS)
def test_matches_oracle(n, norm, dtype, rng, fft_path):
    x = rng.standard_normal((3, n)).astype(dtype)
    t = torch.from_numpy(x.copy())
    X = circfft.rdfft(t, norm=norm)
    assert X.dtype == TORCH_DTYPES[dtype] and X.shape == t.shape
    expected = packed_rfft_oracle(x.astype(np.float64), norm=norm)
    atol = tolerance(n, dtype, np.linalg.norm(x, axis=-1).max()) * _scale(n, norm, True)
    assert_close(X.numpy(), expected, atol)
    back = circfft.irdfft(X, norm=norm)
    spec_norm = full_spectrum_norm(expected).max()
    # back = irdfft(X) with X the computed spectrum: against irdfft of the exact spectrum, the
    # inverse's own bound plus X's error carried through the inverse (the round trip bound)
    atol_i = (tolerance(n, dtype, spec_norm) * _scale(n, norm, False)
              + round_trip_tolerance(n, dtype, np.linalg.norm(x, axis=-1).max()))
    assert_close(back.numpy(), packed_irfft_oracle(expected, norm=norm), atol_i)


def test_axis_and_strided_input(rng, fft_path):
    x = rng.standard_normal((8, 6, 5))
    t = torch.from_numpy(x).permute(2, 0, 1)            # non-contiguous view, shape (5, 8, 6)
    for axis in (0, 1, -1):
        got = circfft.rdfft(t, axis=axis)
        expected = packed_rfft_oracle(t.numpy(), axis=axis)
        n = t.shape[axis]
        tol = np.expand_dims(np.vectorize(lambda r: tolerance(n, np.float64, r))(
            row_norms(t.numpy(), axis=axis)), axis)
        assert_close(got.numpy(), expected, tol)


def test_structured_inputs(fft_path):
    n = 16
    delta = torch.zeros(n, dtype=torch.float64)
    delta[0] = 1.0
    X = circfft.rdfft(delta)
    expected = np.zeros(n)
    expected[: n // 2 + 1] = 1.0
    assert_close(X.numpy(), expected, tolerance(n, np.float64, 1.0))
    if not fft_path:      # circfft's power-of-two kernels: W^0 = 1 only, exact
        assert torch.equal(X, torch.from_numpy(expected))
    const = torch.full((n,), 3.0, dtype=torch.float64)
    X = circfft.rdfft(const)
    expected = np.zeros(n)
    expected[0] = 3.0 * n
    assert_close(X.numpy(), expected, tolerance(n, np.float64, 3.0 * np.sqrt(n)))
    alt = torch.tensor([(-1.0) ** k for k in range(n)], dtype=torch.float64)
    X = circfft.rdfft(alt)
    expected = np.zeros(n)
    expected[n // 2] = n
    assert_close(X.numpy(), expected, tolerance(n, np.float64, np.sqrt(n)))


def test_integer_input_promotes_to_default_dtype():
    X = circfft.rdfft(torch.arange(8))
    assert X.dtype == torch.get_default_dtype()
    x = np.arange(8.0)
    assert_close(X.double().numpy(), packed_rfft_oracle(x),
                 tolerance(8, np.dtype(str(X.dtype).split(".")[-1]), np.linalg.norm(x)))


def test_workers_and_empty():
    x = torch.randn(64, 32, dtype=torch.float64)
    atol = tolerance(32, np.float64, row_norms(x.numpy()).max())
    expected = packed_rfft_oracle(x.numpy())
    for workers in (1, 2, -1):
        assert_close(circfft.rdfft(x, workers=workers).numpy(), expected, atol, f"{workers}")
    # and the worker count does not change the result (CPU results are reproducible)
    assert torch.equal(circfft.rdfft(x, workers=2), circfft.rdfft(x))
    e = torch.empty(0, 8)
    assert circfft.rdfft(e).shape == (0, 8)


# ---------------------------------------------------------------------------------------------
# out= and overwrite_x semantics
# ---------------------------------------------------------------------------------------------
def _forward_ref(x):
    x64 = x.detach().double().numpy()
    n = x64.shape[-1]
    dt = np.dtype(str(x.dtype).split(".")[-1])
    return packed_rfft_oracle(x64), np.vectorize(lambda r: tolerance(n, dt, r))(
        row_norms(x64))[:, None]


def _inverse_ref(X):
    X64 = X.detach().double().numpy()
    n = X64.shape[-1]
    dt = np.dtype(str(X.dtype).split(".")[-1])
    return packed_irfft_oracle(X64), np.vectorize(lambda r: tolerance(n, dt, r) / n)(
        full_spectrum_norm(X64))[:, None]


@pytest.mark.parametrize("dtype_", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_out_is_x_in_place(dtype_, fft_path):
    x = torch.randn(4, 16, dtype=dtype_)
    expected, atol = _forward_ref(x)
    ptr = x.data_ptr()
    r = circfft.rdfft(x, out=x)
    assert r is x and x.data_ptr() == ptr
    assert_close(x.numpy(), expected, atol)


def test_out_separate_tensor(fft_path):
    x = torch.randn(4, 16, dtype=torch.float64)
    x0 = x.clone()
    out = torch.full_like(x, float("nan"))
    r = circfft.irdfft(x, out=out)
    assert r is out
    assert torch.equal(x, x0)
    expected, atol = _inverse_ref(x0)
    assert_close(out.numpy(), expected, atol)


@pytest.mark.parametrize("fn", ["rdfft", "irdfft"])
def test_overwrite_x_values(fn, fft_path):
    """overwrite_x=True: the result is right (whatever buffer holds it); a tensor autograd
    needs is left alone, and its gradient is right."""
    transform = getattr(circfft, fn)
    ref = _forward_ref if fn == "rdfft" else _inverse_ref
    for x in (torch.randn(4, 16), torch.randn(4, 16, dtype=torch.float64),
              torch.randn(16, 8, dtype=torch.float64).t(),          # strided
              torch.randn(4, 33)[:, 1::2]):                          # strided, offset
        expected, atol = ref(x.clone())
        r = transform(x, overwrite_x=True)
        assert r.dtype == x.dtype and r.shape == x.shape
        assert_close(r.numpy(), expected, atol, f"{fn} {tuple(x.stride())}")
        if r.data_ptr() == x.data_ptr():               # reused: x holds the result
            assert torch.equal(x, r)
    y = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    y0 = y.detach().clone()
    r = transform(y, overwrite_x=True)                 # autograd needs y: a new tensor
    assert r.data_ptr() != y.data_ptr() and torch.equal(y.detach(), y0)
    expected, atol = ref(y0)
    assert_close(r.detach().numpy(), expected, atol)
    g = torch.randn(4, 16, dtype=torch.float64)
    r.backward(g)
    R = dft_matrix_packed(16)
    M = R if fn == "rdfft" else np.linalg.inv(R)
    gx = g.numpy() @ M                                   # d sum(g * (M y)) / dy = g M
    assert_close(y.grad.numpy(), gx, np.vectorize(
        lambda v: 2 * tolerance(16, np.float64, v) * (1.0 if fn == "rdfft" else 2.0 / 16))(
        row_norms(g.numpy()))[:, None])


def _storage_positions(parent, view):
    """Flat positions in ``parent`` (contiguous) of the elements of ``view``."""
    idx = torch.arange(parent.numel()).view(parent.shape)
    return idx.as_strided(view.shape, view.stride(),
                          view.storage_offset() - parent.storage_offset()).reshape(-1)


def test_out_strided_view_leaves_the_rest_of_the_storage_alone(fft_path):
    """out= a strided view of a NaN-filled parent: the view gets the result, every other
    element of the parent stays NaN (nothing written outside out)."""
    for fn, ref in (("rdfft", _forward_ref), ("irdfft", _inverse_ref)):
        x = torch.randn(4, 16, dtype=torch.float64)
        parent = torch.full((40, 40), float("nan"), dtype=torch.float64)
        for out in (parent[1:9:2, 3:35:2], parent[0:8:2, :16], parent[1:5, 4:20],
                    parent[2:18, 30:34].t()):
            assert out.shape == x.shape
            parent.fill_(float("nan"))
            r = getattr(circfft, fn)(x, out=out)
            assert r is out
            expected, atol = ref(x)
            assert_close(out.numpy(), expected, atol, fn)
            mask = torch.ones_like(parent, dtype=torch.bool)
            mask.view(-1)[_storage_positions(parent, out)] = False
            assert torch.isnan(parent[mask]).all(), f"{fn}: written outside out"


@pytest.mark.parametrize("fn", ["rdfft", "irdfft"])
def test_out_interleaved_with_x_but_disjoint(fn, fft_path):
    """x = base[::2], out = base[1::2] share a buffer but no element: accepted (as numpy
    accepts it), x untouched, out holds the result."""
    base = torch.randn(32, dtype=torch.float64)
    x, out = base[::2], base[1::2]
    x0 = x.clone()
    r = getattr(circfft, fn)(x, out=out)
    assert r is out
    assert torch.equal(x, x0)
    expected, atol = (_forward_ref if fn == "rdfft" else _inverse_ref)(x0[None])
    assert_close(out.numpy()[None], expected, atol)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: circfft.rdfft(torch.ones(4, dtype=torch.complex64)), TypeError, "complex"),
    (lambda: circfft.rdfft(torch.ones(4, dtype=torch.bool)), TypeError, "bool"),
    (lambda: circfft.rdfft(torch.tensor(1.0)), ValueError, "0-d"),
    (lambda: circfft.rdfft(torch.ones(4), axis=3), ValueError, "out of range"),
    (lambda: circfft.rdfft(torch.ones(4), norm="bad"), ValueError, "norm"),
    (lambda: circfft.rdfft(torch.ones(4), workers=0), ValueError, "workers"),
    (lambda: circfft.rdfft(torch.ones(4), out=torch.empty(5)), ValueError, "shape"),
    (lambda: circfft.rdfft(torch.ones(4), out=torch.empty(4, dtype=torch.float64)), TypeError,
     "dtype"),
    (lambda: circfft.rdfft(torch.ones(4), out=np.empty(4, np.float32)), TypeError, "Tensor"),
    (lambda: circfft.rdfft(torch.ones(4, dtype=torch.int64), out=None, backend="numpy"),
     TypeError, "numpy arrays"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_error_partial_overlap_and_expanded():
    buf = torch.arange(10.0)
    before = buf.clone()
    with pytest.raises(ValueError, match="overlaps x partially"):
        circfft.rdfft(buf[:8], out=buf[2:])
    assert torch.equal(buf, before)                     # nothing half-written
    with pytest.raises(ValueError, match="out has elements sharing memory"):
        circfft.rdfft(torch.ones(4, 8), out=torch.zeros(1, 8).expand(4, 8))
    e = torch.ones(1, 8).expand(4, 8)
    with pytest.raises(ValueError, match="sharing memory"):
        circfft.rdfft(e, out=e)
    i = torch.arange(8)
    with pytest.raises(TypeError, match="in place"):
        circfft.rdfft(i, out=i)


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n", (1, 2, 3, 4, 5, 8, 12))
def test_gradcheck(n, norm, fft_path):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: circfft.rdfft(t, norm=norm), (x,))
    assert torch.autograd.gradcheck(lambda t: circfft.irdfft(t, norm=norm), (x,))
    assert torch.autograd.gradcheck(lambda t: circfft.rdfft(t, axis=0, norm=norm), (x,))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("forward", [True, False])
def test_gradcheck_in_place_and_out(norm, forward):
    fn = circfft.rdfft if forward else circfft.irdfft
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    def inplace(t):
        u = t * 1.0
        r = fn(u, out=u, norm=norm)
        assert r is u
        return u

    def into_out(t):
        out = torch.zeros_like(t)
        return fn(t, out=out, norm=norm)

    assert torch.autograd.gradcheck(inplace, (x,))
    assert torch.autograd.gradcheck(into_out, (x,))


def test_gradgradcheck():
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: circfft.rdfft(t, norm="ortho"), (x,))


def test_backward_is_adjoint_against_dense_matrix(fft_path):
    n = 8
    R = dft_matrix_packed(n)
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, dtype=torch.float64)
    circfft.rdfft(x).backward(g)
    # R^T g = B D g (docs/operators.rst): one weighted transform of g (weights <= 2)
    gn = float(np.linalg.norm(g.numpy()))
    assert_close(x.grad.numpy(), R.T @ g.numpy(), 2 * tolerance(n, np.float64, gn))
    x.grad = None
    circfft.irdfft(x).backward(g)
    # R^{-T} g = D^{-1} F g / n: the same bound / n
    assert_close(x.grad.numpy(), np.linalg.inv(R).T @ g.numpy(),
                 2 * tolerance(n, np.float64, gn) / n)


def test_nothing_saved_for_backward():
    x = torch.randn(4, 16, requires_grad=True)
    with saved_tensors() as saved:
        y = circfft.irdfft(circfft.rdfft(x, norm="ortho") * 1.0)
        u = y * 1.0        # saves nothing (a constant factor)
        circfft.rdfft(u, out=u)
    assert saved == []
    u.sum().backward()
    assert x.grad is not None


def test_in_place_marks_dirty_and_leaf_raises():
    leaf = torch.randn(8, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        circfft.rdfft(leaf, out=leaf)
    with torch.no_grad():                           # allowed under no_grad, as for torch ops
        circfft.rdfft(leaf, out=leaf)
    x = torch.randn(8, requires_grad=True)
    u = x * 2.0
    v0 = u._version
    circfft.rdfft(u, out=u)
    assert u._version > v0 and u.grad_fn is not None


def test_no_grad_and_inference_mode():
    x = torch.randn(4, 8, requires_grad=True)
    with torch.no_grad():
        y = circfft.rdfft(x)
    assert not y.requires_grad
    with torch.inference_mode():
        z = torch.randn(4, 8)
        Z = circfft.rdfft(z)
        circfft.irdfft(Z, out=Z)
        atol = round_trip_tolerance(8, np.float32, row_norms(z.numpy()).max())
        assert_close(Z.numpy(), z.numpy(), atol)


# ---------------------------------------------------------------------------------------------
# Half precision
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hdtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_round_trip(hdtype):
    """x -> irdfft(rdfft(x)) in half precision, computed in float32.

    Derived bound: the spectrum is exact to float32 level and then rounded to the half dtype,
    X~ = X + e with |e_k| <= u |X_k| (u = eps/2 of the half dtype).  Since R R^T = n D,
    ||R^{-1} e||_2 <= sqrt(2/n) ||e||_2 <= sqrt(2/n) u ||X||_2 <= sqrt(2) u ||x||_2; the final
    rounding adds u |x|.  The float32 arithmetic adds the float32 round trip's bound
    (`oracles.round_trip_tolerance`).
    """
    n = 64
    x = torch.randn(5, n).to(hdtype)
    X = circfft.rdfft(x)
    assert X.dtype == hdtype
    back = circfft.irdfft(X)
    assert back.dtype == hdtype
    u = torch.finfo(hdtype).eps / 2
    xn = x.double()
    norms = xn.norm(dim=-1, keepdim=True)
    e1 = math.sqrt(2) * u * norms + round_trip_tolerance(n, np.float32, float(norms.max()))
    atol = e1 + u * (xn.abs() + e1)
    assert torch.all((back.double() - xn).abs() <= atol)
    # and the spectrum itself is the exact spectrum to the float32 bound, rounded once
    exact = packed_rfft_oracle(xn.numpy())
    tol = tolerance(n, np.float32, float(norms.max()))
    assert_close(X.double().numpy(), exact, (tol + u * np.abs(exact)) * (1 + u))


@pytest.mark.parametrize("hdtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_in_place_and_grad(hdtype):
    """In place in half precision: the float32 spectrum of the half input rounded once into
    x.  Gradients: the adjoint computed in float32 and rounded once to half, against the
    float64 dense matrix."""
    n = 16
    u = unit_roundoff(hdtype)
    x = torch.randn(4, n).to(hdtype)
    x64 = x.double().numpy()
    exact = packed_rfft_oracle(x64)
    tol = np.vectorize(lambda r: tolerance(n, np.float32, r))(row_norms(x64))[:, None]
    r = circfft.rdfft(x, out=x)
    assert r is x and x.dtype == hdtype
    assert_close(x.double().numpy(), exact, (tol + u * np.abs(exact)) * (1 + u), "in place")
    R = dft_matrix_packed(n)
    for fn, M in (("rdfft", R), ("irdfft", np.linalg.inv(R))):
        w = torch.randn(4, n).to(hdtype).requires_grad_(True)
        g = torch.randn(4, n).to(hdtype)
        (getattr(circfft, fn)(w).float() * g.float()).sum().backward()
        assert w.grad.dtype == hdtype
        g64 = g.double().numpy()
        gx = g64 @ M
        scale = 1.0 if fn == "rdfft" else 1.0 / n
        tol = np.vectorize(lambda v: 2 * tolerance(n, np.float32, v) * scale)(
            row_norms(g64))[:, None]
        assert_close(w.grad.double().numpy(), gx, (tol + u * np.abs(gx)) * (1 + u),
                     f"grad of {fn}")


# ---------------------------------------------------------------------------------------------
# Registered operators and torch.compile
# ---------------------------------------------------------------------------------------------
def test_opcheck_transform_ops():
    ops = torch.ops.circfft
    x = torch.randn(3, 8, dtype=torch.float64)
    for forward in (True, False):
        for weighted in (False, True):
            torch.library.opcheck(ops.transform.default,
                                  (x.clone().requires_grad_(), 1, forward, 0.5, 1, weighted))
            torch.library.opcheck(ops.transform_.default, (x.clone(), 0, forward, 1.0, 1, weighted))


def test_compiled_matches_eager():
    def f(x):
        X = F.rdfft(x, norm="ortho")
        u = X * 2.0
        F.irdfft(u, out=u)
        return F.rdfft(u, dim=0).sin().sum()

    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    eager = f(x)
    (g_eager,) = torch.autograd.grad(eager, x)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    comp = compiled(x)
    (g_comp,) = torch.autograd.grad(comp, x)
    # the same kernels on the same inputs: exactly the eager result
    torch.testing.assert_close(comp, eager, rtol=0, atol=0)
    torch.testing.assert_close(g_comp, g_eager, rtol=0, atol=0)


def test_compile_fullgraph_in_a_fresh_process():
    """circfft.nn.functional loads the backend at import, so the first trace needs no lock."""
    code = ("import torch\n"
            "from circfft.nn import functional as F\n"
            "f = torch.compile(lambda w, x: F.rdfft(F.block_circulant_matmul(w, x)),\n"
            "                  fullgraph=True, backend='eager')\n"
            "w, x = torch.randn(1, 2, 4), torch.randn(3, 8)\n"
            "assert torch.equal(f(w, x), F.rdfft(F.block_circulant_matmul(w, x)))\n")
    _run_python(code)


def test_compiled_inductor_matches_eager():
    f = torch.compile(lambda x: F.irdfft(F.rdfft(x) * x), fullgraph=True)
    x = torch.randn(4, 16)
    torch.testing.assert_close(f(x), F.irdfft(F.rdfft(x) * x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Functional API and the CUDA path
# ---------------------------------------------------------------------------------------------
def test_functional_spectral_mul_matches_oracle(rng):
    A = rng.standard_normal((3, 10))
    B = rng.standard_normal((10,))
    # one complex multiply per pair: (2 + 1) eps |a| |b| per component (as in test_layout.py)
    eps = np.finfo(np.float64).eps
    tol = 3 * eps * (np.abs(A) + np.abs(A[:, ::-1])).max() * (np.abs(B) + np.abs(B[::-1])).max()
    for conj in (False, True):
        got = F.spectral_mul(torch.from_numpy(A), torch.from_numpy(B), conj=conj)
        assert_close(got.numpy(), complex_pair_product_oracle(A, B, conj=conj), tol)
    a = torch.from_numpy(A).requires_grad_()
    b = torch.from_numpy(B).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, q: F.spectral_mul(p, q, conj=True), (a, b))


def test_functional_rejects_numpy():
    with pytest.raises(TypeError, match="torch.Tensor"):
        F.rdfft(np.ones(4))


def test_cpu_tensors_never_reach_the_cuda_kernels():
    assert tb.cuda_kernels(torch.device("cpu")) is None
    assert tb.cuda_kernels(torch.device("meta")) is None


@pytest.mark.gpu
def test_cuda_matches_oracle():
    x = torch.randn(16, 64, dtype=torch.float64)
    xc = x.cuda().requires_grad_()
    expected, atol = _forward_ref(x)
    for norm in NORMS:
        X = circfft.rdfft(xc, norm=norm)
        assert X.device.type == "cuda"
        s = _scale(64, norm, True)
        assert_close(X.detach().cpu().numpy(), expected * s, atol * s, f"norm={norm}")
        back = circfft.irdfft(X, norm=norm).detach().cpu().numpy()
        assert_close(back, x.numpy(), np.vectorize(
            lambda r: round_trip_tolerance(64, np.float64, r))(row_norms(x.numpy()))[:, None])
    circfft.rdfft(xc).sum().backward()
    assert torch.autograd.gradcheck(lambda t: circfft.irdfft(t, norm="ortho"),
                                    (xc[:2, :8].detach().clone().requires_grad_(),))


def test_public_functions_compile_fullgraph():
    """circfft.rdfft/irdfft (not only circfft.nn.functional) trace under fullgraph=True once
    circfft.nn is imported (it loads the torch backend)."""
    import circfft.nn  # noqa: F401

    x = torch.arange(16, dtype=torch.float64).reshape(2, 8)
    compiled = torch.compile(lambda t: circfft.irdfft(circfft.rdfft(t) * 2.0), fullgraph=True)
    torch.testing.assert_close(compiled(x), 2.0 * x, rtol=0, atol=1e-12)
