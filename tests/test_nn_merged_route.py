"""The merged route of the adapter layers: base layer and update in one matmul.

A layer with one pending adapter on a plain float32 ``nn.Linear`` / ``Conv1D`` computes
``x (W + dW)^T + bias`` (``circfft::block_circulant_linear`` / ``circfft::fourierft_linear``),
with the kernel / spectrum gradients computed without forming ``gy^T x`` where cheaper.  These
tests compare it with float64 dense oracles (tests/oracles.py) on a base layer with non-zero
weight and bias, check when it is (not) taken, and what it saves for backward.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oracles import (assert_close, block_circulant_fold_oracle,  # noqa: E402
                     block_circulant_matrix_oracle, fourierft_dense_oracle, tolerance)

import circfft  # noqa: E402
import circfft.nn as cnn  # noqa: E402
from _autograd_spy import saved_tensors  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _np(t):
    return t.detach().to(torch.float64).cpu().numpy()


def _base(kind, d_in, d_out, bias, gen):
    if kind == "conv1d":
        from transformers.pytorch_utils import Conv1D

        base = Conv1D(d_out, d_in)
        with torch.no_grad():
            base.weight.copy_(torch.randn(d_in, d_out, generator=gen))
            base.bias.copy_(torch.randn(d_out, generator=gen))
        W = base.weight.detach().T
    else:
        base = torch.nn.Linear(d_in, d_out, bias=bias)
        with torch.no_grad():
            base.weight.copy_(torch.randn(d_out, d_in, generator=gen))
            if bias:
                base.bias.copy_(torch.randn(d_out, generator=gen))
        W = base.weight.detach()
    b = base.bias.detach() if base.bias is not None else torch.zeros(d_out)
    return base, _np(W), _np(b)


def _inputs(d_in, gen, tokens=9):
    """Structured rows (impulse, constant, integers, zeros) and random rows, float32."""
    rows = [torch.zeros(d_in), torch.ones(d_in), torch.arange(d_in) % 5 - 2.0,
            torch.zeros(d_in)]
    rows[0][d_in // 2] = 1.0
    rand = torch.randn(tokens - len(rows), d_in, generator=gen)
    return torch.cat([torch.stack(rows).float(), rand]).reshape(1, tokens, d_in)


def _matmul_atol(a, B):
    """float32 ``a @ B.T`` (plus a bias and the float32 rounding of ``B``'s entries): per
    element at most ``(k + 2) eps ||a_row||_2 ||B_row||_2`` (k = inner length, Cauchy-Schwarz
    on the sum of |a_j B_ij|), doubled for the build of ``B``'s update by transforms."""
    a = a.reshape(-1, a.shape[-1])
    k = a.shape[1]
    return 2 * (k + 2 + 4 * math.log2(max(B.size, 2))) * EPS32 * (
        np.linalg.norm(a, axis=1).max() * np.linalg.norm(B, axis=1).max() + 1.0)


def _grad_atol(g, x, scale_norm):
    """Entry of a gradient summed over tokens: ``sum_t g_t x_t`` products, |.| <= T max|g||x|."""
    g, x = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
    n = g.shape[1] * x.shape[1]
    return 3 * scale_norm * tolerance(n, np.float32, 1.0) * len(x) * float(
        np.linalg.norm(g, axis=1).max() * np.linalg.norm(x, axis=1).max())


def _run(layer, x, gen):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    return x, y, g


@pytest.mark.parametrize("kind", ["linear", "linear-nobias", "conv1d"])
@pytest.mark.parametrize("d_in,d_out,b", [(24, 16, 8), (12, 36, 4), (15, 10, 5), (7, 7, 7)])
@pytest.mark.parametrize("pieces", ["whole", "block-rows"])
def test_circulant_merged_route_matches_dense_oracle(kind, d_in, d_out, b, pieces):
    # the circulant blocks added to the merged weight all at once, or one block row at a time
    with circfft.config(chunk_elements=10 ** 9 if pieces == "whole" else 1):
        _check_circulant_merged_route(kind, d_in, d_out, b)


def _check_circulant_merged_route(kind, d_in, d_out, b):
    gen = torch.Generator().manual_seed(d_in * 31 + d_out + b)
    base, W, bias = _base(kind.split("-")[0], d_in, d_out, kind != "linear-nobias", gen)
    layer = cnn.CirculantAdapter(base, b, scale=0.37, init="normal")
    assert layer._merged_route_weight(torch.zeros(1, d_in), (), {}) is not None
    w = layer.circ_kernel["default"]
    x, y, g = _run(layer, _inputs(d_in, gen), gen)
    Weff = W + 0.37 * block_circulant_matrix_oracle(_np(w))
    x64, g64 = _np(x).reshape(-1, d_in), _np(g).reshape(-1, d_out)
    assert_close(_np(y).reshape(-1, d_out), x64 @ Weff.T + bias, _matmul_atol(x64, Weff),
                 "forward")
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ Weff, _matmul_atol(g64, Weff.T),
                 "grad x")
    gw = 0.37 * block_circulant_fold_oracle(g64.T @ x64, b)
    assert_close(_np(w.grad), gw, _grad_atol(g64, x64, 0.37), "grad kernel")
    assert base.weight.grad is None


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("d_in,d_out,n", [(16, 8, 20), (12, 20, 240), (15, 9, 30), (7, 6, 1)])
@pytest.mark.parametrize("grad_path", ["gather", "matmul"])
def test_fourierft_merged_route_matches_dense_oracle(kind, d_in, d_out, n, grad_path):
    with circfft.config(fourierft_grad="gather" if grad_path == "gather" else "dense"):
        _check_fourierft_merged_route(kind, d_in, d_out, n)


def _check_fourierft_merged_route(kind, d_in, d_out, n):
    gen = torch.Generator().manual_seed(d_in * 17 + d_out + n)
    base, W, bias = _base(kind, d_in, d_out, True, gen)
    torch.manual_seed(5)
    layer = cnn.FourierFTAdapter(base, n_frequency=n, scaling=15.0, random_loc_seed=41)
    spec = layer.fourierft_spectrum["default"]
    rows, cols = (_np(t).astype(int) for t in layer.positions("default"))
    x, y, g = _run(layer, _inputs(d_in, gen), gen)
    D = fourierft_dense_oracle(_np(spec), rows, cols, d_out, d_in, 15.0)
    Weff = W + D
    x64, g64 = _np(x).reshape(-1, d_in), _np(g).reshape(-1, d_out)
    assert_close(_np(y).reshape(-1, d_out), x64 @ Weff.T + bias, _matmul_atol(x64, Weff),
                 "forward")
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ Weff, _matmul_atol(g64, Weff.T),
                 "grad x")
    G = g64.T @ x64
    u, v = np.meshgrid(np.arange(d_out), np.arange(d_in), indexing="ij")
    gf = np.array([15.0 * np.sum(G * np.cos(2 * np.pi * (u * rows[k] / d_out
                                                         + v * cols[k] / d_in)))
                   / (d_in * d_out) for k in range(n)])
    assert_close(_np(spec.grad), gf, _grad_atol(g64, x64, 15.0 / math.sqrt(d_in * d_out)),
                 "grad spectrum")


@pytest.mark.parametrize("make", [
    lambda base: cnn.CirculantAdapter(base, 4, init="normal"),
    lambda base: cnn.FourierFTAdapter(base, n_frequency=30)])
def test_merged_and_separate_routes_agree(make):
    gen = torch.Generator().manual_seed(8)
    base, W, _ = _base("linear", 16, 12, True, gen)
    layer = make(base)
    x = _inputs(16, gen)
    outs = []
    for route in ("merged", "separate"):
        layer.zero_grad(set_to_none=True)
        with circfft.config(adapter_route=route):
            xx, y, g = _run(layer, x, torch.Generator().manual_seed(9))
        p = next(p for p in layer.parameters() if p.requires_grad)
        outs.append((_np(y), _np(xx.grad), _np(p.grad)))
    for a, b, what in zip(outs[0], outs[1], ("forward", "grad x", "grad adapter")):
        assert_close(a, b, 64 * EPS32 * (np.abs(b).max() + np.abs(W).max() * 16), what)


def _route_used(layer, x):
    calls = []
    orig = layer._merged_linear

    def spy(*args):
        calls.append(1)
        return orig(*args)

    layer._merged_linear = spy
    try:
        layer(x)
    finally:
        del layer._merged_linear
    return bool(calls)


def test_route_is_taken_only_where_it_applies():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 16, generator=gen)
    layer = cnn.CirculantAdapter(torch.nn.Linear(16, 8), 4, init="normal")
    assert _route_used(layer, x)
    # half-precision base: the separate float32 update (rounded once into the base output)
    half = cnn.CirculantAdapter(torch.nn.Linear(16, 8).to(torch.bfloat16), 4, init="normal")
    assert not _route_used(half, x.to(torch.bfloat16))
    # a hook on the base layer must still fire: no merged route
    seen = []
    h = layer.base_layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert not _route_used(layer, x) and seen == [(3, 8)]
    h.remove()
    # two pending adapters: summed separately
    layer.add_adapter("second", layer.configs["default"])
    assert not _route_used(layer, x)
    layer.set_adapter("second")
    assert _route_used(layer, x)
    # merged into the weight, or disabled: the base layer alone
    layer.merge()
    assert not _route_used(layer, x)
    layer.unmerge()
    with layer.disable_adapters():
        assert not _route_used(layer, x)


@pytest.mark.parametrize("make", [
    lambda base: cnn.CirculantAdapter(base, 8, init="normal"),
    lambda base: cnn.FourierFTAdapter(base, n_frequency=50)])
def test_merged_route_saves_only_x_and_small_tensors(make):
    base = torch.nn.Linear(32, 16)
    layer = make(base)
    x = torch.randn(64, 32, requires_grad=True)              # tokens > d_out, d_in
    with saved_tensors() as saved:
        y = layer(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert all(t.data_ptr() == x.data_ptr() for t in big), [tuple(t.shape) for t in big]
    assert sum(t.numel() for t in saved if t.data_ptr() != x.data_ptr()) <= 2 * 32 * 16 + 200
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("make", [
    lambda base: cnn.CirculantAdapter(base, 4, init="normal"),
    lambda base: cnn.FourierFTAdapter(base, n_frequency=30)])
def test_chunked_gradients_and_empty_input(make):
    """Token chunks of one row give the same gradients; zero tokens give zero gradients."""
    gen = torch.Generator().manual_seed(12)
    base, W, _ = _base("linear", 16, 12, True, gen)
    layer = make(base)
    p = next(p for p in layer.parameters() if p.requires_grad)
    x = _inputs(16, gen)
    grads = []
    for chunk in (circfft.get_config().chunk_elements, 1):
        layer.zero_grad(set_to_none=True)
        # fourierft_grad="gather": the chunked gather path
        with circfft.config(chunk_elements=chunk, fourierft_grad="gather"):
            _run(layer, x, torch.Generator().manual_seed(3))
        grads.append(_np(p.grad))
    assert_close(grads[1], grads[0], 64 * EPS32 * np.abs(grads[0]).max(), "chunked")
    layer.zero_grad(set_to_none=True)
    xe = torch.zeros(0, 16, requires_grad=True)
    y = layer(xe)
    assert y.shape == (0, 12)
    y.sum().backward()
    assert p.grad is not None and not p.grad.any() and xe.grad.shape == (0, 16)
