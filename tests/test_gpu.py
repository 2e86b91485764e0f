"""The CUDA backend on a GPU: cupy arrays and torch CUDA tensors against cuFFT and dense oracles.

Every test that needs a device carries ``@pytest.mark.gpu`` and skips cleanly without cupy or
a CUDA device.  The first tests (dispatch without cupy) run everywhere.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import require

import circfft
from oracles import (STORAGE_EPS, assert_close, block_circulant_matrix_oracle,
                     block_circulant_fold_oracle, circular_convolution_oracle,
                     circular_correlation_oracle, device_packed_rfft_oracle,
                     fft_relative_error, round_trip_tolerance, row_norms, scale_factor,
                     tolerance)


def _gpu_reason():
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed ({exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as exc:  # CUDARuntimeError without a driver
        return f"no CUDA device ({exc})"
    return None


GPU_REASON = _gpu_reason()


def _torch_cuda_reason():
    if GPU_REASON is not None:
        return GPU_REASON
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "torch has no CUDA device"


# ---------------------------------------------------------------------------------------------
# Without a GPU
# ---------------------------------------------------------------------------------------------
def test_import_never_imports_cupy():
    code = ("import sys, numpy as np, circfft; circfft.rdfft(np.ones(8)); "
            "assert 'cupy' not in sys.modules, 'cupy was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr


def test_cupy_backend_registered_with_reason():
    status = circfft.backends.available()["cupy"]
    if GPU_REASON is None:
        assert status.available and status.family == "cupy"
    else:
        assert not status.available and status.reason


# ---------------------------------------------------------------------------------------------
# cupy arrays
# ---------------------------------------------------------------------------------------------
def _cp():
    import cupy

    return cupy


def _check_forward(x, X, dtype=np.float32, extra_rel=0.0):
    """X (device) against cuFFT's float64 spectrum of x (device), bound per row norm."""
    cp = _cp()
    expected = cp.asnumpy(device_packed_rfft_oracle(cp, x))
    n = x.shape[-1]
    norms = row_norms(cp.asnumpy(x.astype(cp.float64))).max()
    atol = tolerance(n, dtype, norms) + extra_rel * np.abs(expected)
    assert_close(cp.asnumpy(X.astype(cp.float64)), expected, atol, f"n={n}")


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
@pytest.mark.parametrize("log2n", range(1, 25))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_powers_of_two_match_cufft(log2n, dtype):
    cp = _cp()
    n = 1 << log2n
    rows = max(1, (1 << 21) >> log2n)
    x = cp.random.default_rng(log2n).standard_normal((rows, n), dtype=cp.float64).astype(dtype)
    ref = x.copy()
    X = circfft.rdfft(x, out=x)
    assert X is x
    _check_forward(ref, X, dtype)
    back = circfft.irdfft(X, out=X)
    norms = row_norms(cp.asnumpy(ref)).max()
    assert_close(cp.asnumpy(back), cp.asnumpy(ref), round_trip_tolerance(n, dtype, norms))


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
@pytest.mark.parametrize("n", [2, 64, 1024, 1 << 13, 1 << 16, 1 << 18])
def test_float16_storage_computed_in_float32(n):
    cp = _cp()
    x = cp.random.default_rng(n).standard_normal((4, n), dtype=cp.float32).astype(cp.float16)
    X = circfft.rdfft(x.copy())
    assert X.dtype == cp.float16
    # output rounding to float16 (half an ulp of each value) on top of float32 arithmetic
    _check_forward(x, X, np.float32, extra_rel=STORAGE_EPS["float16"])


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
@pytest.mark.parametrize("n", [8, 1 << 12, 1 << 17])
def test_structured_inputs(n):
    cp = _cp()
    zeros = cp.zeros((3, n), dtype=cp.float32)
    assert not cp.any(circfft.rdfft(zeros))
    const = cp.full((2, n), 3.0, dtype=cp.float64)
    X = cp.asnumpy(circfft.rdfft(const))
    expected = np.zeros((2, n))
    expected[:, 0] = 3.0 * n
    assert_close(X, expected, tolerance(n, np.float64, 3.0 * math.sqrt(n)), "constant")
    imp = cp.zeros((n, n) if n <= 4096 else (2, n), dtype=cp.float64)
    for r in range(imp.shape[0]):
        imp[r, r] = 1.0
    _check_forward(imp, circfft.rdfft(imp), np.float64)
    ints = cp.arange(2 * n, dtype=cp.int64).reshape(2, n) % 7 - 3
    X = circfft.rdfft(ints)                      # integers -> float64
    assert X.dtype == cp.float64
    _check_forward(ints.astype(cp.float64), X, np.float64)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
@pytest.mark.parametrize("norm", [None, "ortho", "forward"])
@pytest.mark.parametrize("n", [256, 1 << 16, 12])
def test_norms_and_any_length(norm, n):
    cp = _cp()
    x = cp.random.default_rng(3).standard_normal((5, n))
    X = circfft.rdfft(x, norm=norm)
    expected = cp.asnumpy(device_packed_rfft_oracle(cp, x)) * scale_factor(n, norm, True)
    atol = tolerance(n, np.float64, row_norms(cp.asnumpy(x)).max()) * scale_factor(n, norm, True)
    assert_close(cp.asnumpy(X), expected, atol)
    back = circfft.irdfft(X, norm=norm)
    assert_close(cp.asnumpy(back), cp.asnumpy(x),
                 round_trip_tolerance(n, np.float64, row_norms(cp.asnumpy(x)).max()))


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
@pytest.mark.parametrize("n", [16, 2048, 1 << 16])
def test_strided_views_in_place(n):
    cp = _cp()
    rng = cp.random.default_rng(5)
    parent = rng.standard_normal((6, 3, 2 * n), dtype=cp.float64).astype(cp.float32)
    before = parent.copy()
    views = [parent[::2, 1, ::2], parent[:, :, ::-2], parent[::-3, ::2, n:]]
    for v in views:
        parent[...] = before
        ref = v.copy()
        out = circfft.rdfft(v, out=v)
        assert out is v
        _check_forward(ref, v)
        touched = cp.zeros(parent.shape, dtype=bool)
        if v is views[0]:
            touched[::2, 1, ::2] = True
        elif v is views[1]:
            touched[:, :, ::-2] = True
        else:
            touched[::-3, ::2, n:] = True
        assert cp.array_equal(parent[~touched], before[~touched]), "elements outside x changed"
    # transform along axis 0 (element stride = row length)
    y = rng.standard_normal((n, 7))
    Y = circfft.rdfft(y, axis=0)
    _check_forward(cp.ascontiguousarray(y.T), cp.ascontiguousarray(Y.T), np.float64)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
def test_many_rows_grid_stride():
    cp = _cp()
    x = cp.random.default_rng(9).standard_normal(((1 << 18) + 3, 8), dtype=cp.float32)
    _check_forward(x, circfft.rdfft(x))


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
def test_bad_input_messages():
    cp = _cp()
    ints = cp.ones(8, dtype=cp.int32)
    with pytest.raises(TypeError, match="x must be .* in place"):
        circfft.rdfft(ints, out=ints)
    assert (ints == 1).all()
    with pytest.raises(TypeError, match="complex"):
        circfft.rdfft(cp.ones(8, dtype=cp.complex64))
    with pytest.raises(ValueError, match="norm"):
        circfft.rdfft(cp.ones(8), norm="bogus")
    with pytest.raises(ValueError, match="out has shape"):
        circfft.rdfft(cp.ones(8), out=cp.ones(4))


# ---------------------------------------------------------------------------------------------
# circulant products
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
@pytest.mark.parametrize("n", [1, 2, 7, 8, 64])
@pytest.mark.parametrize("conj", [False, True])
def test_spectral_mul_in_place(n, conj):
    cp = _cp()
    be = circfft.backends.get_backend("cupy")
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal((3, n)), rng.standard_normal(n)
    A, B = circfft.rdfft(cp.asarray(a)), circfft.rdfft(cp.asarray(b))
    expected = (circular_correlation_oracle if conj else circular_convolution_oracle)(a, b)
    Z = be.spectral_mul(A, B, conj=conj)                  # broadcasts B over the rows
    atol = tolerance(n, np.float64, np.abs(a).sum() * np.abs(b).sum()) * 3
    assert_close(cp.asnumpy(circfft.irdfft(Z)), expected, atol)
    B3 = cp.ascontiguousarray(cp.broadcast_to(B, A.shape))
    out = be.spectral_mul(A, B3, conj=conj, out=B3)       # in place on the second operand
    assert out is B3
    assert_close(cp.asnumpy(circfft.irdfft(B3)), expected, atol)
    out = be.spectral_mul(A, B, conj=conj, out=A)         # in place on the first operand
    assert out is A
    assert_close(cp.asnumpy(circfft.irdfft(A)), expected, atol)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
@pytest.mark.parametrize("b", [1, 4, 7, 64])
@pytest.mark.parametrize("transpose", [False, True])
def test_block_circulant_matmul_dense(b, transpose):
    cp = _cp()
    rng = np.random.default_rng(b)
    m, k = 3, 2
    w = rng.standard_normal((m, k, b))
    x = rng.standard_normal((5, 4, (m if transpose else k) * b))
    D = block_circulant_matrix_oracle(w)
    expected = x @ (D if transpose else D.T)
    y = circfft.block_circulant_matmul(cp.asarray(w), cp.asarray(x), transpose=transpose)
    atol = 4 * tolerance(b, np.float64, np.abs(w).sum() * np.abs(x).max() * b)
    assert_close(cp.asnumpy(y), expected, atol)
    dense = circfft.block_circulant_dense(cp.asarray(w))
    assert cp.array_equal(dense, cp.asarray(D))


# ---------------------------------------------------------------------------------------------
# torch CUDA tensors
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(_torch_cuda_reason() is not None, reason=str(_torch_cuda_reason()))
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [64, 8192, 1 << 17])
def test_torch_cuda_uses_kernels(dtype, n):
    import torch

    from circfft.backends import torch_backend

    circfft.backends.get_backend("torch")
    assert torch_backend.cuda_kernels(torch.device("cuda")) is not None, \
        "the CUDA kernels are not used for CUDA tensors"
    dt = getattr(torch, dtype)
    x = torch.randn(3, n, device="cuda", dtype=torch.float32).to(dt)
    ref = x.clone()
    X = circfft.rdfft(x, out=x)
    assert X is x and X.dtype == dt
    expected = device_packed_rfft_oracle(torch, ref).cpu().numpy()
    extra = STORAGE_EPS.get(dtype, 0.0)
    cd = np.float64 if dtype == "float64" else np.float32
    atol = tolerance(n, cd, row_norms(ref.double().cpu().numpy()).max()) + extra * np.abs(expected)
    assert_close(X.double().cpu().numpy(), expected, atol)


@pytest.mark.gpu
@pytest.mark.skipif(_torch_cuda_reason() is not None, reason=str(_torch_cuda_reason()))
def test_torch_cuda_autograd_and_stream():
    import torch

    from circfft.nn import functional as F

    x = torch.randn(4, 32, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.rdfft(t), (x,))
    assert torch.autograd.gradcheck(lambda t: F.irdfft(t, norm="ortho"), (x,))
    # On a side stream held back by a long sleep, the kernels must follow torch's current
    # stream: launched on another stream they would read y before randn has written it.
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)
        y = torch.randn(64, 4096, device="cuda")
        ref = y.clone()
        circfft.rdfft(y, out=y)
    s.synchronize()
    expected = device_packed_rfft_oracle(torch, ref)
    atol = tolerance(4096, np.float32, row_norms(ref.cpu().numpy()).max())
    assert_close(y.cpu().numpy(), expected.cpu().numpy(), atol)


@pytest.mark.gpu
@pytest.mark.skipif(_torch_cuda_reason() is not None, reason=str(_torch_cuda_reason()))
def test_torch_cuda_block_circulant_gradients():
    import torch

    from circfft.nn import functional as F

    rng = np.random.default_rng(0)
    m, k, b = 2, 3, 16
    w = rng.standard_normal((m, k, b))
    x = rng.standard_normal((10, k * b))
    g = rng.standard_normal((10, m * b))
    wt = torch.tensor(w, device="cuda", requires_grad=True)
    xt = torch.tensor(x, device="cuda", requires_grad=True)
    y = F.block_circulant_matmul(wt, xt)
    (y * torch.tensor(g, device="cuda")).sum().backward()
    D = block_circulant_matrix_oracle(w)
    atol = 4 * tolerance(b, np.float64, np.abs(w).sum() * np.abs(x).max() * b)
    assert_close(y.detach().cpu().numpy(), x @ D.T, atol)
    assert_close(xt.grad.cpu().numpy(), g @ D, atol * np.abs(g).max() / np.abs(x).max())
    assert_close(wt.grad.cpu().numpy(), block_circulant_fold_oracle(g.T @ x, b),
                 _kernel_grad_atol(g, x, b, np.float64))


def _kernel_grad_atol(g, x, b, dtype):
    """``fold(g^T x)`` by transforms, summed over the tokens: per token three transforms of a
    circular correlation, ``3 r sqrt(b) ||g_t|| ||x_t||`` (r = `fft_relative_error`), plus
    the sum over the T tokens (see tests/test_circulant.py)."""
    g = np.asarray(g, dtype=np.float64).reshape(-1, np.shape(g)[-1])
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    eps = float(np.finfo(np.dtype(dtype)).eps)
    pairs = float((row_norms(g) * row_norms(x)).sum())
    return math.sqrt(b) * (3 * fft_relative_error(b, dtype) + (len(x) + 2) * eps) * pairs


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        _torch_cuda_reason() is not None, reason=str(_torch_cuda_reason()))])])
def test_adapter_forward_backward_against_oracle(device):
    """A float64 adapted layer on the device against the float64 oracle (not against another
    device; the CPU run checks the same code): output and kernel gradient of sum(y^2)."""
    torch = require("torch")
    from torch import nn

    from circfft.nn import CirculantConfig, inject
    from _adapter_checks import layer_atol, oracle_delta

    torch.manual_seed(0)
    model = inject(nn.Sequential(nn.Linear(64, 128)).double(),
                   CirculantConfig(target_modules=["0"], block_size=16, init="normal",
                                   scale=0.5)).to(device)
    x = torch.randn(8, 64, dtype=torch.float64)
    y_dev = model(x.to(device))
    assert y_dev.device.type == device
    y_dev.square().sum().backward()
    layer = model[0]
    x64 = x.numpy()
    W = layer.base_layer.weight.detach().cpu().numpy()
    bias = layer.base_layer.bias.detach().cpu().numpy()
    y = x64 @ (W + oracle_delta(layer)).T + bias
    y_atol = layer_atol(layer, x64)
    assert_close(y_dev.detach().cpu().numpy(), y, y_atol, "forward")
    g = 2 * y                                               # d sum(y^2) / dy
    w = layer.circ_kernel["default"]
    s = layer.scale("default")
    # the gradient uses the computed y, whose error (y_atol per entry) enters through g and
    # reaches an entry of the fold through sum over tokens and positions of |x|
    atol = abs(s) * (_kernel_grad_atol(g, x64, 16, np.float64)
                     + 2 * float(np.abs(y_atol).max()) * float(np.abs(x64).sum()))
    assert_close(w.grad.cpu().numpy(), s * block_circulant_fold_oracle(g.T @ x64, 16), atol,
                 "kernel gradient")


def test_bench_device_cuda_clean_error_without_gpu():
    if _torch_cuda_reason() is None:
        pytest.skip("a GPU is present: the benchmark would run")
    run = subprocess.run([sys.executable, "-m", "circfft", "bench", "--device", "cuda",
                          "--sizes", "64"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "no GPU to run on" in run.stderr and "Traceback" not in run.stderr


def test_torch_kernel_set_is_none_without_gpu():
    torch = require("torch")
    from circfft.backends._cuda_launch import torch_kernel_set

    ks = torch_kernel_set(torch.device("cuda", 0))
    assert (ks is not None) == (GPU_REASON is None)


@pytest.mark.gpu
@pytest.mark.skipif(_torch_cuda_reason() is not None, reason=str(_torch_cuda_reason()))
def test_block_circulant_in_a_cuda_graph():
    """Once warmed up (kernels compiled, tables cached), forward and backward of the
    block-circulant operator are captured in a CUDA graph and replay correctly."""
    import torch

    from circfft.nn import functional as F

    w = torch.randn(3, 2, 16, device="cuda", requires_grad=True)
    x = torch.randn(256, 32, device="cuda", requires_grad=True)
    g = torch.randn(256, 48, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            (F.block_circulant_matmul(w, x) * g).sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    w.grad = x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = F.block_circulant_matmul(w, x)
        (y * g).sum().backward()
    x.data.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    wn = w.detach().double().cpu().numpy()
    D = block_circulant_matrix_oracle(wn)
    xd, gd = x.detach().double().cpu().numpy(), g.double().cpu().numpy()
    # the per-block bound of test_circulant.py, with every block's norm bounded by the largest
    atol = 4 * tolerance(16, np.float32, np.abs(wn).sum() * np.abs(xd).max() * 16)
    assert_close(y.detach().cpu().numpy(), xd @ D.T, atol, "replayed forward")
    assert_close(x.grad.cpu().numpy(), gd @ D, atol * np.abs(gd).max() / np.abs(xd).max(),
                 "replayed backward")
    assert_close(w.grad.cpu().numpy(), block_circulant_fold_oracle(gd.T @ xd, 16),
                 _kernel_grad_atol(gd, xd, 16, np.float32), "replayed kernel gradient")
