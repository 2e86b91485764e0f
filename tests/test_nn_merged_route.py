"""The merged route of the adapter layers: base layer and update in one matmul.

A layer with one pending adapter on a plain float32 ``nn.Linear`` / ``Conv1D`` computes
``x (W + dW)^T + bias`` (``circfft::block_circulant_linear`` / ``circfft::fourierft_linear``),
with the kernel / spectrum gradients computed without forming ``gy^T x`` where cheaper.  These
tests compare it with float64 dense oracles (tests/oracles.py) on a base layer with non-zero
weight and bias (both routes against the oracle, never against each other), check when it is
(not) taken, and what it saves for backward.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import require

torch = require("torch")

from oracles import (adapter_update_tolerance, assert_close,  # noqa: E402
                     block_circulant_fold_oracle, block_circulant_matrix_oracle,
                     fft_relative_error, fourierft_dense_oracle, fourierft_grad_tolerance,
                     fourierft_matmul_tolerance, matmul_tolerance, row_norms)

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


def _merged_atol(a, Weff, build, bias=None):
    """float32 ``a @ Weff.T (+ bias)`` where the merged weight was built with a per-entry error
    ``build`` and rounded once: `matmul_tolerance` of the product, plus the build and the
    rounding carried by ``sum_j |a_j|`` (and one rounding of the bias)."""
    a = a.reshape(-1, a.shape[-1])
    built = float(np.max(build + EPS32 * np.abs(Weff)))
    return (matmul_tolerance(a, Weff, np.float32) + built * float(np.abs(a).sum(axis=1).max())
            + (EPS32 * np.abs(bias) if bias is not None else 0.0))


def _circulant_build(s, w64):
    """The merged route adds ``s * C(w)`` by a gather of ``s w`` (one rounding per entry)."""
    return EPS32 * np.abs(s * block_circulant_matrix_oracle(w64))


def _fourierft_build(D):
    """FourierFT's ``dW`` from one 2-d transform: ``r ||dW||_F`` (normwise) per entry."""
    return fft_relative_error(D.size, np.float32) * np.linalg.norm(D) + EPS32 * np.abs(D)


def _kernel_grad_atol(g, x, s, b):
    """``s sum_t corr(g_t, x_t)`` by transforms: per token the three transforms of a circular
    correlation (``3 r sqrt(b) ||g_t|| ||x_t||``), the sum over the T tokens and the scale."""
    g, x = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
    pairs = float((row_norms(g) * row_norms(x)).sum())
    return abs(s) * math.sqrt(b) * (3 * fft_relative_error(b, np.float32)
                                    + (len(x) + 2) * EPS32) * pairs


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
    build = _circulant_build(0.37, _np(w))
    x64, g64 = _np(x).reshape(-1, d_in), _np(g).reshape(-1, d_out)
    assert_close(_np(y).reshape(-1, d_out), x64 @ Weff.T + bias,
                 _merged_atol(x64, Weff, build, bias), "forward")
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ Weff,
                 _merged_atol(g64, Weff.T, build.T), "grad x")
    gw = 0.37 * block_circulant_fold_oracle(g64.T @ x64, b)
    assert_close(_np(w.grad), gw, _kernel_grad_atol(g64, x64, 0.37, b), "grad kernel")
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
    build = _fourierft_build(D)
    x64, g64 = _np(x).reshape(-1, d_in), _np(g).reshape(-1, d_out)
    assert_close(_np(y).reshape(-1, d_out), x64 @ Weff.T + bias,
                 _merged_atol(x64, Weff, build, bias), "forward")
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ Weff,
                 _merged_atol(g64, Weff.T, build.T), "grad x")
    G = g64.T @ x64
    u, v = np.meshgrid(np.arange(d_out), np.arange(d_in), indexing="ij")
    gf = np.array([15.0 * np.sum(G * np.cos(2 * np.pi * (u * rows[k] / d_out
                                                         + v * cols[k] / d_in)))
                   / (d_in * d_out) for k in range(n)])
    assert_close(_np(spec.grad), gf,
                 fourierft_grad_tolerance(g64, x64, d_out, d_in, 15.0, np.float32),
                 "grad spectrum")


def _oracle(layer, W, bias, x64, g64):
    """Forward, grad x and adapter gradient of ``layer`` on a base ``W``, ``bias`` from the
    float64 oracles, with their float32 bounds on either route (the separate route: the base
    product, the update's transforms; the merged route: the product with the built weight)."""
    d_out, d_in = W.shape
    if isinstance(layer, cnn.CirculantAdapter):
        w64, s, b = _np(layer.circ_kernel["default"]), layer.scale("default"), \
            layer.configs["default"].block_size
        D = s * block_circulant_matrix_oracle(w64)
        build = _circulant_build(s, w64)
        grad = s * block_circulant_fold_oracle(g64.T @ x64, b)
        grad_atol = _kernel_grad_atol(g64, x64, s, b)
        # the separate route's update by transforms
        upd = adapter_update_tolerance(b, np.float32, s, w64, x64)
        upd_g = adapter_update_tolerance(b, np.float32, s, w64.transpose(1, 0, 2), g64)
    else:
        rows, cols = (_np(t).astype(int) for t in layer.positions("default"))
        f64, sc = _np(layer.fourierft_spectrum["default"]), layer.configs["default"].scaling
        D = fourierft_dense_oracle(f64, rows, cols, d_out, d_in, sc)
        build = _fourierft_build(D)
        G = g64.T @ x64
        u, v = np.meshgrid(np.arange(d_out), np.arange(d_in), indexing="ij")
        grad = np.array([sc * np.sum(G * np.cos(2 * np.pi * (u * r / d_out + v * c / d_in)))
                         / (d_in * d_out) for r, c in zip(rows, cols)])
        grad_atol = fourierft_grad_tolerance(g64, x64, d_out, d_in, sc, np.float32)
        upd = fourierft_matmul_tolerance(f64, x64, d_out, d_in, sc, np.float32)
        upd_g = fourierft_matmul_tolerance(f64, g64, d_in, d_out, sc, np.float32)
    Weff = W + D
    y_atol = (_merged_atol(x64, Weff, build, bias) + matmul_tolerance(x64, W, np.float32)
              + upd + EPS32 * np.abs(x64 @ Weff.T + bias))
    gx_atol = (_merged_atol(g64, Weff.T, build.T) + matmul_tolerance(g64, W.T, np.float32)
               + upd_g + EPS32 * np.abs(g64 @ Weff))
    return ((x64 @ Weff.T + bias, y_atol), (g64 @ Weff, gx_atol), (grad, grad_atol))


@pytest.mark.parametrize("make", [
    lambda base: cnn.CirculantAdapter(base, 4, init="normal"),
    lambda base: cnn.FourierFTAdapter(base, n_frequency=30)])
def test_merged_and_separate_routes_both_match_the_oracle(make):
    """Both routes on the same layer, each against the float64 oracle (not each other)."""
    gen = torch.Generator().manual_seed(8)
    base, W, bias = _base("linear", 16, 12, True, gen)
    layer = make(base)
    x = _inputs(16, gen)
    for route in ("merged", "separate"):
        layer.zero_grad(set_to_none=True)
        with circfft.config(adapter_route=route):
            assert _route_used(layer, x) == (route == "merged")
            xx, y, g = _run(layer, x, torch.Generator().manual_seed(9))
        p = next(p for p in layer.parameters() if p.requires_grad)
        x64, g64 = _np(xx).reshape(-1, 16), _np(g).reshape(-1, 12)
        expected = _oracle(layer, W, bias, x64, g64)
        for got, (want, atol), what in zip((_np(y).reshape(-1, 12), _np(xx.grad).reshape(-1, 16),
                                            _np(p.grad)), expected,
                                           ("forward", "grad x", "grad adapter")):
            assert_close(got, want, atol, f"{route}: {what}")


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
    for chunk in (circfft.get_config().chunk_elements, 1):
        layer.zero_grad(set_to_none=True)
        # fourierft_grad="gather": the chunked gather path
        with circfft.config(chunk_elements=chunk, fourierft_grad="gather"):
            xx, y, g = _run(layer, x, torch.Generator().manual_seed(3))
        grad, atol = _oracle(layer, W, np.zeros(12) + _np(base.bias), _np(xx).reshape(-1, 16),
                             _np(g).reshape(-1, 12))[2]
        assert_close(_np(p.grad), grad, atol, f"chunk_elements={chunk}")
    layer.zero_grad(set_to_none=True)
    xe = torch.zeros(0, 16, requires_grad=True)
    y = layer(xe)
    assert y.shape == (0, 12)
    y.sum().backward()
    assert p.grad is not None and not p.grad.any() and xe.grad.shape == (0, 16)
