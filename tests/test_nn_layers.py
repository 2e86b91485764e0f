"""Adapter layers of circfft.nn against dense oracles (tests/oracles.py) and stock PEFT layers.

The math tests use a base layer with zero weight and bias, so the layer's output *is* the
update (``0 + u`` is exact) and the tolerances are those of the update alone.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oracles import (adapter_update_tolerance, assert_close,  # noqa: E402
                     block_circulant_matrix_oracle, block_circulant_fold_oracle,
                     c3a_kernel_to_first_column, circulant_diagonal_dense_oracle,
                     fourierft_dense_oracle, tolerance)

import circfft.nn as cnn  # noqa: E402
from circfft.nn.layers import default_block_size, valid_block_sizes  # noqa: E402
from _autograd_spy import saved_tensors  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _np(t):
    return t.detach().to(torch.float64).cpu().numpy()


def _zero_linear(d_in, d_out, dtype=torch.float32):
    lin = torch.nn.Linear(d_in, d_out).to(dtype)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    return lin


def _inputs(d_in, gen):
    """Structured rows (impulse, constant, integers, zeros) and random rows, float32."""
    rows = [torch.zeros(d_in), torch.ones(d_in), torch.zeros(d_in)]
    rows[0][1] = 1.0
    rows[2] = torch.arange(d_in, dtype=torch.float32) % 7 - 3.0
    rows.append(torch.zeros(d_in))
    rand = torch.randn(4, d_in, generator=gen)
    return torch.cat([torch.stack(rows), rand]).reshape(2, 4, d_in)


def _conv1d(d_in, d_out):
    from transformers.pytorch_utils import Conv1D

    return Conv1D(d_out, d_in)


# ---------------------------------------------------------------------------------------------
# CirculantAdapter
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d_in,d_out,b", [(16, 8, 4), (12, 24, 4), (32, 32, 32), (18, 12, 3),
                                          (8, 8, 1)])
@pytest.mark.parametrize("scale", ["fan_in", "block", 0.37])
def test_circulant_forward_and_gradients_match_dense_oracle(d_in, d_out, b, scale):
    gen = torch.Generator().manual_seed(d_in * 100 + d_out + b)
    layer = cnn.CirculantAdapter(_zero_linear(d_in, d_out), b, scale=scale, init="normal")
    s = {"fan_in": 1.0 / d_in, "block": 1.0 / b}.get(scale, scale)
    assert layer.scale("default") == pytest.approx(s)
    w = layer.circ_kernel["default"]
    assert w.shape == (d_out // b, d_in // b, b) and w.dtype == torch.float32
    x = _inputs(d_in, gen).requires_grad_(True)
    y = layer(x)
    D = s * block_circulant_matrix_oracle(_np(w))
    atol = adapter_update_tolerance(b, np.float32, s, _np(w), _np(x))
    assert_close(_np(y), _np(x) @ D.T, atol, "forward")
    # The dense delta is an exact gather times the scale.
    assert_close(_np(layer.delta_weight("default")), D, EPS32 * np.abs(D).max() + 1e-30,
                 "delta_weight")
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    g64, x64 = _np(g).reshape(-1, d_out), _np(x).reshape(-1, d_in)
    gx_atol = adapter_update_tolerance(b, np.float32, s, _np(w), g64)
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ D, gx_atol, "grad x")
    gw = s * block_circulant_fold_oracle(g64.T @ x64, b)
    # grad w[i, j] sums over tokens and over the d_out/b x d_in/b grid, one block pair each.
    gw_atol = 3 * abs(s) * tolerance(b, np.float32, 1.0) * (
        np.linalg.norm(g64, axis=1).max() * np.linalg.norm(x64, axis=1).max() * len(x64))
    assert_close(_np(w.grad), gw, gw_atol, "grad kernel")
    assert layer.base_layer.weight.grad is None
    assert not layer.base_layer.weight.requires_grad


def test_circulant_zero_init_is_identity_with_nonzero_kernel_gradient():
    gen = torch.Generator().manual_seed(1)
    base = torch.nn.Linear(16, 8)
    layer = cnn.CirculantAdapter(copy.deepcopy(base), 4)          # init="zeros"
    x = torch.randn(5, 16, generator=gen, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, base(x))
    g = torch.randn(5, 8, generator=gen)
    (y * g).sum().backward()
    w = layer.circ_kernel["default"]
    assert w.grad is not None and w.grad.abs().max() > 0
    gw = block_circulant_fold_oracle(_np(g).T @ _np(x), 4) / 16
    atol = 3 * tolerance(4, np.float32, 1.0) * float(
        np.linalg.norm(_np(g), axis=1).max() * np.linalg.norm(_np(x), axis=1).max() * 5) / 16
    assert_close(_np(w.grad), gw, atol)


@pytest.mark.parametrize("d_in,d_out,b", [(16, 8, 4), (8, 24, 8)])
def test_circulant_matches_peft_c3a(d_in, d_out, b):
    peft = pytest.importorskip("peft")
    torch.manual_seed(d_in + d_out + b)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(d_in, d_out)

        def forward(self, x):
            return self.proj(x)

    model = Tiny()
    ours = cnn.CirculantAdapter(copy.deepcopy(model.proj), b, scale="fan_in")
    pm = peft.get_peft_model(model, peft.C3AConfig(block_size=b, target_modules=["proj"],
                                                   init_weights="gaussian"))
    c3a = pm.base_model.model.proj
    k = c3a.c3a_kernel["default"]
    with torch.no_grad():
        ours.circ_kernel["default"].copy_(torch.from_numpy(c3a_kernel_to_first_column(_np(k))))
    gen = torch.Generator().manual_seed(7)
    x1 = torch.randn(3, 2, d_in, generator=gen)
    x2 = x1.clone()
    x1.requires_grad_(True)
    x2.requires_grad_(True)
    y_ref, y = pm(x1), ours(x2)
    # Both are FFT-based float32 computations of the same update: twice one bound, plus the
    # float32 rounding of the shared base output (|W x + bias| relative).
    w_ours = _np(ours.circ_kernel["default"])
    base_out = np.abs(_np(ours.base_layer(x1))).max()
    atol = 2 * adapter_update_tolerance(b, np.float32, 1.0 / d_in, w_ours, _np(x1)) \
        + 2 * EPS32 * base_out
    assert_close(_np(y), _np(y_ref), atol, "forward vs PEFT C3A")
    g = torch.randn(y.shape, generator=gen)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    g64 = _np(g).reshape(-1, d_out)
    # PEFT 0.21.2's BlockCircularConvolution.backward returns a wrong input gradient (it does
    # not match autograd through its own forward), so the input gradient is checked against
    # the gradient of PEFT's forward map: g @ (W + get_delta_weight()).
    w_total = _np(ours.base_layer.weight) + _np(c3a.get_delta_weight("default"))
    atol_x = 2 * adapter_update_tolerance(b, np.float32, 1.0 / d_in, w_ours, g64) \
        + 2 * EPS32 * float(np.abs(g64).sum(axis=1).max() * np.abs(w_total).max())
    assert_close(_np(x2.grad).reshape(-1, d_in), g64 @ w_total, atol_x, "grad x vs PEFT map")
    # grad of k[t] is grad of w[(-t) mod b] (the bridge is an index involution) divided by d_in
    # on C3A's side: C3A applies 1/d_in outside, ours inside scale.
    grad_k_from_ours = c3a_kernel_to_first_column(_np(ours.circ_kernel["default"].grad))
    x64 = _np(x1).reshape(-1, d_in)
    atol_k = 2 * 3 * tolerance(b, np.float32, 1.0) * float(
        np.linalg.norm(g64, axis=1).max() * np.linalg.norm(x64, axis=1).max() * len(x64)) / d_in
    assert_close(grad_k_from_ours, _np(k.grad), atol_k, "grad kernel vs PEFT")


# ---------------------------------------------------------------------------------------------
# CirculantDiagonalAdapter
# ---------------------------------------------------------------------------------------------
def test_circulant_diagonal_default_block_size_and_param_count():
    assert default_block_size(48, 80) == 16
    assert default_block_size(24, 36) == 4
    assert default_block_size(9, 15) == 1
    for (i, o, m) in [(16, 16, 1), (16, 8, 2), (12, 24, 3)]:
        layer = cnn.CirculantDiagonalAdapter(torch.nn.Linear(i, o), factors=m)
        b = default_block_size(i, o)
        assert layer.block_size("default") == b
        n = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        assert n == o + m * i + (m - 1) * i * i // b + o * i // b
        assert layer.adapter_cost("default")["params"] == n
    # Square d x d with b = d and one factor: 3d parameters.
    assert cnn.CirculantDiagonalAdapter(torch.nn.Linear(32, 32)).adapter_cost(
        "default")["params"] == 96


@pytest.mark.parametrize("d_in,d_out,b,m", [(16, 8, 4, 1), (16, 16, None, 1), (12, 24, 4, 3),
                                            (8, 16, 8, 2)])
def test_circulant_diagonal_matches_dense_oracle(d_in, d_out, b, m):
    gen = torch.Generator().manual_seed(d_in + 3 * d_out + m)
    torch.manual_seed(5)
    layer = cnn.CirculantDiagonalAdapter(_zero_linear(d_in, d_out), block_size=b, factors=m,
                                         init="normal")
    with torch.no_grad():   # random diagonals, so that a swapped diagonal cannot pass
        for p in (layer.cd_left["default"], layer.cd_right["default"]):
            p.copy_(torch.randn(p.shape, generator=gen))
        if m > 1:
            d = layer.cd_inner_diag["default"]
            d.copy_(torch.randn(d.shape, generator=gen))
    inner_k = [_np(k) for k in layer.cd_inner_kernel["default"]] if m > 1 else []
    inner_d = [_np(d) for d in layer.cd_inner_diag["default"]] if m > 1 else []
    D = circulant_diagonal_dense_oracle(_np(layer.cd_left["default"]),
                                        _np(layer.cd_kernel["default"]),
                                        _np(layer.cd_right["default"]), inner_k, inner_d)
    x = _inputs(d_in, gen).requires_grad_(True)
    y = layer(x)
    bb = layer.block_size("default")
    # Each factor is one block-circulant product; the diagonals are exact scalings.  Bound the
    # chain by the product of the factors' norms (operator norm <= Frobenius).
    x64 = _np(x).reshape(-1, d_in)
    ref = x64 @ D.T
    fro = [np.linalg.norm(block_circulant_matrix_oracle(_np(layer.cd_kernel["default"])))]
    fro += [np.linalg.norm(block_circulant_matrix_oracle(k)) for k in inner_k]
    diag = [np.abs(_np(layer.cd_left["default"])).max(),
            np.abs(_np(layer.cd_right["default"])).max()]
    diag += [np.abs(d).max() for d in inner_d]
    chain = float(np.prod(fro) * np.prod(diag) * np.linalg.norm(x64, axis=1).max())
    atol = m * 3 * tolerance(bb, np.float32, chain) + 4 * m * EPS32 * chain
    assert_close(_np(y).reshape(-1, d_out), ref, atol, "forward")
    assert_close(_np(layer.delta_weight("default")), D, 4 * m * EPS32 * float(
        np.prod(fro) * np.prod(diag)), "delta_weight")
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    g64 = _np(g).reshape(-1, d_out)
    chain_g = chain / np.linalg.norm(x64, axis=1).max() * np.linalg.norm(g64, axis=1).max()
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ D,
                 m * 3 * tolerance(bb, np.float32, chain_g) + 4 * m * EPS32 * chain_g, "grad x")
    # Gradient of the left diagonal: sum over tokens of g * (M x), M = D without diag(left).
    left = _np(layer.cd_left["default"])
    M = D / left[:, None]
    gl = (g64 * (x64 @ M.T)).sum(axis=0)
    assert_close(_np(layer.cd_left["default"].grad), gl,
                 len(x64) * (m * 3 * tolerance(bb, np.float32, chain_g / np.abs(left).max()
                                                * np.linalg.norm(x64, axis=1).max())), "grad left")


def test_circulant_diagonal_zero_init_identity_nonzero_gradient():
    gen = torch.Generator().manual_seed(2)
    base = torch.nn.Linear(16, 32)
    for m in (1, 2):
        layer = cnn.CirculantDiagonalAdapter(copy.deepcopy(base), factors=m)
        x = torch.randn(4, 16, generator=gen, requires_grad=True)
        y = layer(x)
        assert torch.equal(y, base(x))
        assert torch.count_nonzero(layer.delta_weight("default")) == 0
        y.square().sum().backward()
        assert layer.cd_left["default"].grad.abs().max() > 0


# ---------------------------------------------------------------------------------------------
# FourierFTAdapter
# ---------------------------------------------------------------------------------------------
def _fourierft_atol(spectrum, x, d_in, d_out, scaling, copies=2):
    """|y_u| <= scaling/(in*out) * ||f||_2 * ||fft(x)||_2 = scaling*||f||*||x||/(sqrt(in)*out);
    each implementation's error is `tolerance` of an ``in*out``-point transform of that size."""
    f = float(np.linalg.norm(_np(spectrum)))
    xn = float(np.linalg.norm(_np(x).reshape(-1, d_in), axis=1).max())
    mag = abs(scaling) * f * xn / (math.sqrt(d_in) * d_out)
    return copies * 3 * tolerance(d_in * d_out, np.float32, mag)


@pytest.mark.parametrize("d_in,d_out,n", [(16, 8, 20), (12, 20, 240), (32, 16, 1)])
def test_fourierft_matches_dense_oracle_and_peft_positions(d_in, d_out, n):
    torch.manual_seed(3)
    layer = cnn.FourierFTAdapter(_zero_linear(d_in, d_out), n_frequency=n, scaling=15.0,
                                 random_loc_seed=41)
    idx = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(41))[:n]
    rows, cols = layer.positions("default")
    assert torch.equal(rows, idx // d_in) and torch.equal(cols, idx % d_in)
    assert "fourierft_rows_default" not in layer.state_dict()
    spec = layer.fourierft_spectrum["default"]
    assert spec.shape == (n,) and spec.dtype == torch.float32 and spec.abs().max() > 0
    D = fourierft_dense_oracle(_np(spec), _np(rows).astype(int), _np(cols).astype(int),
                               d_out, d_in, 15.0)
    gen = torch.Generator().manual_seed(4)
    x = _inputs(d_in, gen).requires_grad_(True)
    y = layer(x)
    atol = _fourierft_atol(spec, x, d_in, d_out, 15.0)
    assert_close(_np(y).reshape(-1, d_out), _np(x).reshape(-1, d_in) @ D.T, atol, "forward")
    assert_close(_np(layer.delta_weight("default")), D,
                 _fourierft_atol(spec, torch.eye(d_in), d_in, d_out, 15.0), "delta_weight")
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    g64, x64 = _np(g).reshape(-1, d_out), _np(x).reshape(-1, d_in)
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ D,
                 _fourierft_atol(spec, torch.from_numpy(g64), d_out, d_in, 15.0), "grad x")
    # d y / d f_k = scaling * Re(ifft2(E_k)) x: the dense gradient folded on the positions.
    G = g64.T @ x64                                      # (out, in)
    u, v = np.meshgrid(np.arange(d_out), np.arange(d_in), indexing="ij")
    r, c = _np(rows).astype(int), _np(cols).astype(int)
    gf = np.array([15.0 * np.sum(G * np.cos(2 * np.pi * (u * r[k] / d_out + v * c[k] / d_in)))
                   / (d_in * d_out) for k in range(n)])
    gf_atol = 3 * 15.0 * tolerance(d_in * d_out, np.float32, 1.0) * float(
        np.linalg.norm(g64, axis=1).max() * np.linalg.norm(x64, axis=1).max() * len(x64)) \
        / math.sqrt(d_in * d_out)
    assert_close(_np(spec.grad), gf, gf_atol, "grad spectrum")


def test_fourierft_init_weights_true_is_identity_and_peft_rng():
    base = torch.nn.Linear(16, 8)
    torch.manual_seed(11)
    layer = cnn.FourierFTAdapter(copy.deepcopy(base), n_frequency=10, init_weights=True)
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), base(x))
    # init_weights=False draws torch.randn(n) from the global generator, as PEFT does.
    torch.manual_seed(11)
    layer = cnn.FourierFTAdapter(copy.deepcopy(base), n_frequency=10)
    torch.manual_seed(11)
    assert torch.equal(layer.fourierft_spectrum["default"].detach(), torch.randn(10))


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv1d"])
def test_fourierft_matches_peft(conv):
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    d_in, d_out, n = 16, 24, 50
    torch.manual_seed(21)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = _conv1d(d_in, d_out) if conv else torch.nn.Linear(d_in, d_out)

        def forward(self, x):
            return self.proj(x)

    model = Tiny()
    ours = cnn.FourierFTAdapter(copy.deepcopy(model.proj), n_frequency=n, scaling=150.0,
                                random_loc_seed=5)
    assert ours.fan_in_fan_out is conv
    pm = peft.get_peft_model(model, peft.FourierFTConfig(
        n_frequency=n, scaling=150.0, random_loc_seed=5, target_modules=["proj"],
        fan_in_fan_out=conv))
    ref = pm.base_model.model.proj
    ridx = ref.indices["default"]
    rows, cols = ours.positions("default")
    assert torch.equal(rows, ridx[0]) and torch.equal(cols, ridx[1])
    with torch.no_grad():
        ours.fourierft_spectrum["default"].copy_(ref.fourierft_spectrum["default"])
    gen = torch.Generator().manual_seed(8)
    x1 = torch.randn(2, 3, d_in, generator=gen)
    x2 = x1.clone().requires_grad_(True)
    x1.requires_grad_(True)
    y_ref, y = pm(x1), ours(x2)
    spec = ours.fourierft_spectrum["default"]
    base_out = float(np.abs(_np(ours.base_layer(x1))).max())
    atol = _fourierft_atol(spec, x1, d_in, d_out, 150.0) + 2 * EPS32 * base_out
    assert_close(_np(y), _np(y_ref), atol, "forward vs PEFT FourierFT")
    g = torch.randn(y.shape, generator=gen)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    g64, x64 = _np(g).reshape(-1, d_out), _np(x1).reshape(-1, d_in)
    gf_atol = 2 * 3 * 150.0 * tolerance(d_in * d_out, np.float32, 1.0) * float(
        np.linalg.norm(g64, axis=1).max() * np.linalg.norm(x64, axis=1).max() * len(x64)) \
        / math.sqrt(d_in * d_out)
    assert_close(_np(spec.grad), _np(ref.fourierft_spectrum["default"].grad), gf_atol,
                 "grad spectrum vs PEFT")
    # Merging: PEFT transposes the delta for Conv1D; so do we.
    w_before = ref.get_base_layer().weight.detach().clone()
    ref.merge()
    ours.merge()
    dw_ref = _np(ref.get_base_layer().weight) - _np(w_before)
    dw = _np(ours.base_layer.weight) - _np(w_before)
    assert dw.shape == tuple(w_before.shape)
    assert_close(dw, dw_ref, 4 * EPS32 * (np.abs(_np(w_before)).max() + np.abs(dw_ref).max()))


# ---------------------------------------------------------------------------------------------
# Shared behaviour: merge, several adapters, disabling, dtypes, Conv1D, memory
# ---------------------------------------------------------------------------------------------
def _make(kind, base, name="default"):
    if kind == "circulant":
        return cnn.CirculantAdapter(base, 4, init="normal", adapter_name=name)
    if kind == "circulant_diagonal":
        return cnn.CirculantDiagonalAdapter(base, factors=2, init="normal", adapter_name=name)
    return cnn.FourierFTAdapter(base, n_frequency=30, scaling=20.0, adapter_name=name)


KINDS = ["circulant", "circulant_diagonal", "fourierft"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
def test_merge_unmerge_round_trip(kind, dtype):
    torch.manual_seed(9)
    layer = _make(kind, torch.nn.Linear(16, 8).to(dtype))
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(6, 16).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    delta = layer.delta_weight("default")
    assert delta.dtype == torch.float32 and delta.shape == (8, 16)
    layer.merge()
    assert layer.merged_adapters == ["default"]
    eps = float(torch.finfo(dtype).eps)
    w0_64, d64 = _np(w0), _np(delta)
    # merged = round(w0 + delta): one rounding of the weight's dtype.
    assert_close(_np(layer.base_layer.weight), w0_64 + d64,
                 eps * (np.abs(w0_64) + np.abs(d64)) + 1e-30, "merged weight")
    y_merged = layer(x)
    xn = float(np.linalg.norm(_np(x), axis=1).max())
    wn = float(np.abs(w0_64 + d64).max()) * math.sqrt(16)
    assert_close(_np(y_merged), _np(y), 4 * eps * xn * wn + 4 * eps * np.abs(_np(y)).max(),
                 "merged output")
    layer.unmerge()
    assert layer.merged_adapters == []
    # round(round(w0 + d) - d): two roundings of the weight's dtype.
    assert_close(_np(layer.base_layer.weight), w0_64,
                 2 * eps * (np.abs(w0_64) + np.abs(d64)) + 1e-30, "unmerged weight")
    assert layer.base_layer.weight.dtype == dtype


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_base(kind, dtype):
    torch.manual_seed(12)
    base32 = torch.nn.Linear(16, 8)
    layer = _make(kind, copy.deepcopy(base32).to(dtype))
    ref = _make(kind, copy.deepcopy(base32))
    ref.load_state_dict(layer.state_dict() | {k: v for k, v in ref.state_dict().items()
                                              if k.startswith("base_layer")})
    for p in layer.parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32
    x = torch.randn(5, 16)
    xh = x.to(dtype).requires_grad_(True)
    y = layer(xh)
    assert y.dtype == dtype
    # Against the float32 layer on the same (rounded) input: the base output is computed in
    # half precision and the sum is rounded once to it.
    y32 = ref(xh.detach().to(torch.float32))
    eps = float(torch.finfo(dtype).eps)
    wn = float(np.abs(_np(base32.weight)).max()) * 16 * float(np.abs(_np(xh)).max())
    assert_close(_np(y), _np(y32), 4 * eps * (np.abs(_np(y32)) + wn) + 1e-6)
    y.float().sum().backward()
    assert xh.grad is not None and xh.grad.dtype == dtype
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32, name


@pytest.mark.parametrize("kind", KINDS)
def test_several_adapters_are_summed_and_selectable(kind):
    torch.manual_seed(13)
    layer = _make(kind, _zero_linear(16, 8), name="a")
    cfg = {"circulant": cnn.CirculantConfig(block_size=8, init="normal"),
           "circulant_diagonal": cnn.CirculantDiagonalConfig(block_size=2, init="normal"),
           "fourierft": cnn.FourierFTConfig(n_frequency=12, scaling=3.0,
                                            random_loc_seed=1)}[kind]
    layer.add_adapter("b", cfg)
    assert layer.active_adapters == ["a", "b"]
    x = torch.randn(4, 16)
    da, db = _np(layer.delta_weight("a")), _np(layer.delta_weight("b"))
    x64 = _np(x)
    scale = (np.abs(da).max() + np.abs(db).max()) * np.linalg.norm(x64, axis=1).max()
    atol = 64 * EPS32 * scale * 4
    assert_close(_np(layer(x)), x64 @ (da + db).T, atol, "sum of both")
    layer.set_adapter("b")
    assert_close(_np(layer(x)), x64 @ db.T, atol, "b only")
    for attr in layer.adapter_param_names:
        store = getattr(layer, attr)
        if "a" in store:
            assert not store["a"].requires_grad
        if "b" in store:
            assert store["b"].requires_grad
    with pytest.raises(ValueError, match="already exists"):
        layer.add_adapter("b", cfg)
    with pytest.raises(ValueError, match="not on this layer"):
        layer.set_adapter(["zzz"])
    layer.set_adapter(["a", "b"])
    layer.merge(["a"])
    assert_close(_np(layer(x)), x64 @ (da + db).T, atol, "a merged, b not")
    layer.delete_adapter("a")
    assert sorted(layer.configs) == ["b"] and layer.merged_adapters == []
    assert np.abs(_np(layer.base_layer.weight)).max() <= 4 * EPS32 * np.abs(da).max()
    assert_close(_np(layer(x)), x64 @ db.T, atol, "after delete")


@pytest.mark.parametrize("kind", KINDS)
def test_disable_context(kind):
    torch.manual_seed(14)
    base = torch.nn.Linear(16, 8)
    layer = _make(kind, copy.deepcopy(base))
    x = torch.randn(3, 16)
    y = layer(x)
    with layer.disable_adapters():
        assert torch.equal(layer(x), base(x))
    assert torch.equal(layer(x), y)
    layer.merge()
    merged_w = layer.base_layer.weight.detach().clone()
    with layer.disable_adapters():
        assert layer.merged_adapters == []
        assert_close(_np(layer(x)), _np(base(x)), 8 * EPS32 * float(
            np.abs(_np(layer.delta_weight("default"))).max() * 16 * np.abs(_np(x)).max()
            + np.abs(_np(base(x))).max()))
    assert layer.merged_adapters == ["default"]
    assert_close(_np(layer.base_layer.weight), _np(merged_w),
                 4 * EPS32 * float(np.abs(_np(merged_w)).max()))


@pytest.mark.parametrize("kind", KINDS)
def test_conv1d_fan_in_fan_out(kind):
    pytest.importorskip("transformers")
    torch.manual_seed(15)
    conv = _conv1d(16, 8)
    lin = torch.nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    a, b = _make(kind, conv), _make(kind, lin)
    assert a.fan_in_fan_out and not b.fan_in_fan_out
    assert (a.in_features, a.out_features) == (16, 8)
    b.load_state_dict({k: v for k, v in b.state_dict().items() if k.startswith("base_layer")}
                      | {k: v for k, v in a.state_dict().items()
                         if not k.startswith("base_layer")})
    x = torch.randn(2, 3, 16)
    yb = b(x)
    tol = 8 * EPS32 * float(np.abs(_np(yb)).max() + 16 * np.abs(_np(x)).max()
                            * np.abs(_np(lin.weight)).max())
    assert_close(_np(a(x)), _np(yb), tol)
    w0 = conv.weight.detach().clone()
    a.merge()
    d = _np(a.delta_weight("default"))
    assert_close(_np(conv.weight), _np(w0) + d.T, 2 * EPS32 * (np.abs(_np(w0)) + np.abs(d.T)))
    assert_close(_np(a(x)), _np(yb), tol)
    a.unmerge()


@pytest.mark.parametrize("kind", KINDS)
def test_forward_saves_nothing_of_x_size_beyond_x(kind):
    """Autograd keeps no tensor as large as x besides x itself (which the base layer saves)."""
    torch.manual_seed(16)
    d = 64
    base = torch.nn.Linear(d, d)
    layer = {"circulant": lambda: cnn.CirculantAdapter(base, 16, init="normal"),
             "circulant_diagonal": lambda: cnn.CirculantDiagonalAdapter(base, 16),
             "fourierft": lambda: cnn.FourierFTAdapter(base, n_frequency=100)}[kind]()
    x = torch.randn(8, 32, d, requires_grad=True)
    with saved_tensors() as saved:
        y = layer(x)
    big = [t for t in saved if t.numel() >= x.numel() and t.data_ptr() != x.data_ptr()]
    assert not big, [(tuple(t.shape), t.dtype) for t in big]
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_matches_cpu(kind, dtype):
    torch.manual_seed(17)
    cpu = _make(kind, torch.nn.Linear(64, 32))
    gpu = copy.deepcopy(cpu).to(device="cuda")
    gpu.base_layer.to(dtype)
    cpu.base_layer.to(dtype)
    x = torch.randn(4, 8, 64).to(dtype)
    xg = x.cuda().requires_grad_(True)
    y, yg = cpu(x.requires_grad_(True)), gpu(xg)
    assert yg.dtype == dtype and yg.device.type == "cuda"
    eps = float(torch.finfo(dtype).eps)
    assert_close(_np(yg), _np(y), 8 * eps * (np.abs(_np(y)).max() + 1.0))
    (y.float().square().sum() + 0).backward()
    yg.float().square().sum().backward()
    for (n, p), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if p.requires_grad:
            scale = float(np.abs(_np(p.grad)).max()) + 1.0
            assert_close(_np(pg.grad), _np(p.grad), 64 * eps * scale, n)
    gpu.merge()
    gpu.unmerge()


# ---------------------------------------------------------------------------------------------
# Bad input and configs
# ---------------------------------------------------------------------------------------------
def test_bad_configs():
    for kw in ({"block_size": 0}, {"block_size": -4}):
        with pytest.raises(ValueError, match="block_size"):
            cnn.CirculantConfig(**kw)
    with pytest.raises(TypeError, match="block_size"):
        cnn.CirculantConfig(block_size=4.0)
    with pytest.raises(ValueError, match="scale"):
        cnn.CirculantConfig(scale="fanin")
    with pytest.raises(ValueError, match="scale"):
        cnn.CirculantConfig(scale=-1.0)
    with pytest.raises(ValueError, match="init"):
        cnn.CirculantConfig(init="ones")
    with pytest.raises(ValueError, match="factors"):
        cnn.CirculantDiagonalConfig(factors=0)
    with pytest.raises(ValueError, match="init"):
        cnn.CirculantDiagonalConfig(init="xavier")
    with pytest.raises(ValueError, match="n_frequency"):
        cnn.FourierFTConfig(n_frequency=0)
    with pytest.raises(ValueError, match="target_modules"):
        cnn.CirculantConfig(target_modules="(")
    with pytest.raises(TypeError, match="modules_to_save"):
        cnn.CirculantConfig(modules_to_save="classifier")


def test_bad_layer_arguments_leave_base_untouched():
    lin = torch.nn.Linear(24, 36)
    sd = {k: v.clone() for k, v in lin.state_dict().items()}
    with pytest.raises(ValueError) as err:
        cnn.CirculantAdapter(lin, 8)
    msg = str(err.value)
    assert "block_size=8" in msg and "[1, 2, 4]" in msg and "[1, 2, 3, 4, 6, 12]" in msg
    assert valid_block_sizes(24, 36) == [1, 2, 3, 4, 6, 12]
    with pytest.raises(ValueError, match="n_frequency=865"):
        cnn.FourierFTAdapter(lin, n_frequency=24 * 36 + 1)
    with pytest.raises(ValueError, match="block_size=5"):
        cnn.CirculantDiagonalAdapter(lin, block_size=5)
    with pytest.raises(TypeError, match="Conv2d"):
        cnn.CirculantAdapter(torch.nn.Conv2d(4, 4, 1), 2)
    assert all(torch.equal(v, sd[k]) for k, v in lin.state_dict().items())
    layer = cnn.CirculantAdapter(lin, 4)
    with pytest.raises(TypeError, match="CirculantConfig"):
        layer.add_adapter("x", cnn.FourierFTConfig())
    with pytest.raises(ValueError, match="adapter name"):
        layer.add_adapter("a.b", cnn.CirculantConfig(block_size=4))
    assert sorted(layer.configs) == ["default"]


def test_config_round_trip():
    cfgs = [cnn.CirculantConfig(block_size=8, scale=0.5, target_modules=["q", "v"],
                                modules_to_save=["head"]),
            cnn.CirculantDiagonalConfig(factors=2, target_modules=".*dense"),
            cnn.FourierFTConfig(n_frequency=7, init_weights=True, exclude_modules=["x"])]
    for cfg in cfgs:
        d = cfg.to_dict()
        assert d["adapter_type"] == cfg.adapter_type
        back = cnn.AdapterConfig.from_dict(json.loads(json.dumps(d)))
        assert type(back) is type(cfg) and back == cfg
    with pytest.raises(ValueError, match="adapter_type"):
        cnn.AdapterConfig.from_dict({"adapter_type": "lora"})
    with pytest.raises(ValueError, match="unknown keys"):
        cnn.AdapterConfig.from_dict({"adapter_type": "circulant", "rank": 4})


@pytest.mark.parametrize("make", [
    lambda base: cnn.CirculantAdapter(base, block_size=4, init="normal"),
    lambda base: cnn.CirculantDiagonalAdapter(base, block_size=4, init="normal"),
    lambda base: cnn.FourierFTAdapter(base, n_frequency=10),
], ids=["circulant", "circulant_diagonal", "fourierft"])
def test_compiles_fullgraph_like_eager(make):
    # Users put adapted models under torch.compile: every adapter must trace in one graph
    # and give the eager result and gradients.
    torch.manual_seed(0)
    layer = make(torch.nn.Linear(8, 12))
    x = torch.randn(5, 8, requires_grad=True)
    wrt = [x] + [p for p in layer.parameters() if p.requires_grad]
    eager = layer(x)
    ge = torch.autograd.grad(eager.sum(), wrt, allow_unused=True)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    got = compiled(x)
    gg = torch.autograd.grad(got.sum(), wrt, allow_unused=True)
    torch.testing.assert_close(got, eager, rtol=0, atol=0)
    for a, b in zip(gg, ge):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
