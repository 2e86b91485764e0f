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

torch = pytest.importorskip("torch")

import circfft  # noqa: E402
import circfft.backends.torch_backend as tb  # noqa: E402
from circfft.nn import functional as F  # noqa: E402
from oracles import (assert_close, full_spectrum_norm, packed_irfft_oracle,  # noqa: E402
                     packed_rfft_oracle, tolerance)
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
    atol_i = (tolerance(n, dtype, spec_norm) * _scale(n, norm, False)
              + tolerance(n, dtype, np.linalg.norm(x, axis=-1).max()))
    assert_close(back.numpy(), packed_irfft_oracle(expected, norm=norm), atol_i)


def test_axis_and_strided_input(rng, fft_path):
    x = rng.standard_normal((8, 6, 5))
    t = torch.from_numpy(x).permute(2, 0, 1)            # non-contiguous view, shape (5, 8, 6)
    for axis in (0, 1, -1):
        got = circfft.rdfft(t, axis=axis)
        expected = packed_rfft_oracle(t.numpy(), axis=axis)
        assert_close(got.numpy(), expected, tolerance(8, np.float64, np.abs(x).sum()))


def test_structured_inputs():
    n = 16
    delta = torch.zeros(n, dtype=torch.float64)
    delta[0] = 1.0
    assert torch.equal(circfft.rdfft(delta)[: n // 2 + 1], torch.ones(n // 2 + 1, dtype=torch.float64))
    const = torch.full((n,), 3.0, dtype=torch.float64)
    X = circfft.rdfft(const)
    assert X[0].item() == 3.0 * n and torch.all(X[1:].abs() < 1e-13)
    alt = torch.tensor([(-1.0) ** k for k in range(n)], dtype=torch.float64)
    X = circfft.rdfft(alt)
    assert abs(X[n // 2].item() - n) < 1e-12 and X[: n // 2].abs().max() < 1e-12


def test_integer_input_promotes_to_default_dtype():
    X = circfft.rdfft(torch.arange(8))
    assert X.dtype == torch.get_default_dtype()
    assert torch.allclose(X.double(), circfft.rdfft(torch.arange(8.0, dtype=torch.float64)))


def test_workers_and_empty():
    x = torch.randn(64, 32, dtype=torch.float64)
    assert torch.allclose(circfft.rdfft(x, workers=2), circfft.rdfft(x), atol=1e-12)
    e = torch.empty(0, 8)
    assert circfft.rdfft(e).shape == (0, 8)


# ---------------------------------------------------------------------------------------------
# out= and overwrite_x semantics
# ---------------------------------------------------------------------------------------------
def test_out_is_x_in_place():
    x = torch.randn(4, 16)
    ref = circfft.rdfft(x.clone())
    ptr = x.data_ptr()
    r = circfft.rdfft(x, out=x)
    assert r is x and x.data_ptr() == ptr
    assert torch.allclose(x, ref, atol=1e-5)


def test_out_separate_tensor():
    x = torch.randn(4, 16, dtype=torch.float64)
    out = torch.empty_like(x)
    r = circfft.irdfft(x, out=out)
    assert r is out
    assert torch.allclose(out, circfft.irdfft(x))


def test_overwrite_x_reuses_buffer():
    x = torch.randn(4, 16)
    r = circfft.rdfft(x, overwrite_x=True)
    assert r.data_ptr() == x.data_ptr()
    y = torch.randn(4, 16, requires_grad=True)
    r = circfft.rdfft(y, overwrite_x=True)          # autograd needs y: a new tensor
    assert r.data_ptr() != y.data_ptr()


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


def test_backward_is_adjoint_against_dense_matrix():
    from oracles import dft_matrix_packed

    n = 8
    R = torch.from_numpy(dft_matrix_packed(n))
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, dtype=torch.float64)
    circfft.rdfft(x).backward(g)
    assert torch.allclose(x.grad, R.T @ g, atol=1e-12)
    x.grad = None
    circfft.irdfft(x).backward(g)
    assert torch.allclose(x.grad, torch.linalg.inv(R).T @ g, atol=1e-12)


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
        assert torch.allclose(Z, z, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Half precision
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hdtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_round_trip(hdtype):
    """x -> irdfft(rdfft(x)) in half precision, computed in float32.

    Derived bound: the spectrum is exact to float32 level and then rounded to the half dtype,
    X~ = X + e with |e_k| <= u |X_k| (u = eps/2 of the half dtype).  Since R R^T = n D,
    ||R^{-1} e||_2 <= sqrt(2/n) ||e||_2 <= sqrt(2/n) u ||X||_2 <= sqrt(2) u ||x||_2; the final
    rounding adds u |x|.  The float32 arithmetic adds the usual tolerance(n, float32).
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
    e1 = math.sqrt(2) * u * norms + 2 * tolerance(n, np.float32, float(norms.max()))
    atol = e1 + u * (xn.abs() + e1)
    assert torch.all((back.double() - xn).abs() <= atol)
    # and the spectrum itself is the float32 spectrum rounded once
    ref = circfft.rdfft(x.float())
    assert torch.all((X.double() - ref.double()).abs() <= u * ref.double().abs() * 1.01 + 1e-30)


def test_half_in_place_and_grad():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    ref = circfft.rdfft(x)
    circfft.rdfft(x, out=x)
    assert torch.equal(x, ref)
    w = torch.randn(4, 16, dtype=torch.float16, requires_grad=True)
    circfft.rdfft(w).float().sum().backward()
    assert w.grad.dtype == torch.float16


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
    assert torch.allclose(eager, comp) and torch.allclose(g_eager, g_comp)


def test_compile_fullgraph_in_a_fresh_process():
    """circfft.nn.functional loads the backend at import, so the first trace needs no lock."""
    code = ("import torch\n"
            "from circfft.nn import functional as F\n"
            "f = torch.compile(lambda w, x: F.rdfft(F.block_circulant_matmul(w, x)),\n"
            "                  fullgraph=True, backend='eager')\n"
            "w, x = torch.randn(1, 2, 4), torch.randn(3, 8)\n"
            "assert torch.allclose(f(w, x), F.rdfft(F.block_circulant_matmul(w, x)))\n")
    _run_python(code)


def test_compiled_inductor_matches_eager():
    f = torch.compile(lambda x: F.irdfft(F.rdfft(x) * x), fullgraph=True)
    x = torch.randn(4, 16)
    assert torch.allclose(f(x), F.irdfft(F.rdfft(x) * x), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Functional API and the CUDA path
# ---------------------------------------------------------------------------------------------
def test_functional_spectral_mul_matches_numpy(rng):
    A = rng.standard_normal((3, 10))
    B = rng.standard_normal((10,))
    for conj in (False, True):
        got = F.spectral_mul(torch.from_numpy(A), torch.from_numpy(B), conj=conj)
        assert np.allclose(got.numpy(), circfft.spectral_mul(A, B, conj=conj))
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
def test_cuda_matches_cpu():
    x = torch.randn(16, 64, dtype=torch.float64)
    xc = x.cuda().requires_grad_()
    for norm in NORMS:
        X = circfft.rdfft(xc, norm=norm)
        assert X.device.type == "cuda"
        assert torch.allclose(X.cpu(), circfft.rdfft(x, norm=norm), atol=1e-10)
        assert torch.allclose(circfft.irdfft(X, norm=norm).cpu(), x, atol=1e-10)
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
