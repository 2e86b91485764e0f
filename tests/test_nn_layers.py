"""Adapter layers of circfft.nn: stock-PEFT equivalence, merging, several adapters, disabling,
half precision, Conv1D, memory, configs -- against dense float64 oracles (tests/oracles.py).

The adapter math on both routes and in float32/float64 is in ``test_nn_adapter_math.py``.
Tolerances are derived per check: `update_atol` bounds an adapter update computed on either
route, `matmul_tolerance` a dense product, `unit_roundoff` one rounding to a storage dtype.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from conftest import require

torch = require("torch")

from oracles import (assert_close, block_circulant_fold_oracle,  # noqa: E402
                     c3a_kernel_to_first_column, circulant_diagonal_chain_error,
                     circulant_diagonal_factor_norms, circulant_diagonal_gradient_oracle,
                     fft_relative_error, fourierft_grad_tolerance, matmul_tolerance, row_norms,
                     tolerance, unit_roundoff)

import circfft.nn as cnn  # noqa: E402
from circfft.nn.layers import default_block_size, valid_block_sizes  # noqa: E402
from _autograd_spy import saved_tensors  # noqa: E402
from _adapter_checks import (adapter_params, base_weight, delta_atol,  # noqa: E402
                             layer_atol, oracle_delta, token_pairs, update_atol)

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
    peft = require("peft")
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
    # Both compute the same base layer and update in float32: each is within the bound of an
    # adapted layer on either route (`layer_atol`) of the exact result, so within twice it of
    # each other.
    atol = 2 * layer_atol(ours, _np(x1).reshape(-1, d_in))
    assert_close(_np(y).reshape(-1, d_out), _np(y_ref).reshape(-1, d_out), atol,
                 "forward vs PEFT C3A")
    g = torch.randn(y.shape, generator=gen)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    g64 = _np(g).reshape(-1, d_out)
    # PEFT 0.21.2's BlockCircularConvolution.backward returns a wrong input gradient (it does
    # not match autograd through its own forward), so the input gradient is checked against
    # the gradient of PEFT's forward map: g @ (W + get_delta_weight()).
    # (PEFT's dense delta: its own float32 transforms, bounded like ours by delta_atol's
    # transform bound; here compared through the product with g.)
    w_total = _np(ours.base_layer.weight) + _np(c3a.get_delta_weight("default"))
    atol_x = 2 * layer_atol(ours, g64, transpose=True)
    assert_close(_np(x2.grad).reshape(-1, d_in), g64 @ w_total, atol_x, "grad x vs PEFT map")
    # grad of k[t] is grad of w[(-t) mod b] (the bridge is an index involution) divided by d_in
    # on C3A's side: C3A applies 1/d_in outside, ours inside scale.
    grad_k_from_ours = c3a_kernel_to_first_column(_np(ours.circ_kernel["default"].grad))
    x64 = _np(x1).reshape(-1, d_in)
    # each within s sqrt(b) (3 r + (T + 2) eps) sum_t ||g_t|| ||x_t|| (test_nn_adapter_math)
    atol_k = 2 * math.sqrt(b) * (3 * fft_relative_error(b, np.float32)
                                 + (len(x64) + 2) * EPS32) * token_pairs(g64, x64) / d_in
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
    peft = require("peft")
    require("transformers")
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
    atol = 2 * layer_atol(ours, _np(x1).reshape(-1, d_in))
    assert_close(_np(y).reshape(-1, d_out), _np(y_ref).reshape(-1, d_out), atol,
                 "forward vs PEFT FourierFT")
    g = torch.randn(y.shape, generator=gen)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    g64, x64 = _np(g).reshape(-1, d_out), _np(x1).reshape(-1, d_in)
    gf_atol = 2 * fourierft_grad_tolerance(g64, x64, d_out, d_in, 150.0, np.float32)
    assert_close(_np(spec.grad), _np(ref.fourierft_spectrum["default"].grad), gf_atol,
                 "grad spectrum vs PEFT")
    # Merging: PEFT transposes the delta for Conv1D; so do we.  Both merged weights against
    # W + dW from the float64 oracle: the float32 transform of dW (r ||dW||_F) and one
    # rounding of the sum.
    w_before = _np(ref.get_base_layer().weight)
    D = oracle_delta(ours)
    expected = w_before + (D.T if conv else D)
    atol = (fft_relative_error(d_in * d_out, np.float32) * np.linalg.norm(D)
            + EPS32 * (np.abs(expected) + np.abs(D.T if conv else D)))
    ref.merge()
    ours.merge()
    assert ours.base_layer.weight.shape == tuple(w_before.shape)
    assert_close(_np(ours.base_layer.weight), expected, atol, "our merged weight")
    assert_close(_np(ref.get_base_layer().weight), expected, atol, "PEFT's merged weight")


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
    w0 = _np(layer.base_layer.weight)
    x = torch.randn(6, 16).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    delta = layer.delta_weight("default")
    assert delta.dtype == torch.float32 and delta.shape == (8, 16)
    # delta_weight against the oracle's delta (not against itself)
    D = oracle_delta(layer)
    assert_close(_np(delta), D, delta_atol(layer), "delta_weight")
    layer.merge()
    assert layer.merged_adapters == ["default"]
    # merged = round_w(w0 + delta): the float32 sum and one rounding to the weight's dtype,
    # around w0 + D of the oracle
    u = unit_roundoff(dtype)
    expected = w0 + D
    merged_atol = delta_atol(layer) + (u + EPS32) * (np.abs(expected) + np.abs(D))
    w_merged = _np(layer.base_layer.weight)
    assert_close(w_merged, expected, merged_atol, "merged weight")
    # the merged layer is a plain linear layer with that weight: within one product in the
    # weight's dtype ((k + 2) 2u per Cauchy-Schwarz term, any accumulation order) and the
    # output rounding
    y_merged = layer(x)
    x64 = _np(x)
    ref = x64 @ w_merged.T + _np(layer.base_layer.bias)
    prod = (16 + 2) * 2 * u * row_norms(x64).max() * row_norms(w_merged).max()
    assert_close(_np(y_merged), ref, prod + u * np.abs(ref), "merged output")
    layer.unmerge()
    assert layer.merged_adapters == []
    # round(round(w0 + d) - d): two roundings of the weight's dtype and two float32 sums.
    d64 = _np(delta)
    assert_close(_np(layer.base_layer.weight), w0,
                 2 * (u + EPS32) * (np.abs(w0) + np.abs(d64)), "unmerged weight")
    assert layer.base_layer.weight.dtype == dtype


def _half_layers(kind, dtype):
    torch.manual_seed(12)
    layer = _make(kind, torch.nn.Linear(16, 8).to(dtype))
    for p in layer.parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32
    return layer


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_base(kind, dtype):
    """Half-precision storage, float32 update: ``y = round_h(b_h + round_h(u))`` with ``b_h``
    the base layer's own half output and ``u`` the float32 update of the (half) input.  So
    ``|y - (b_h + u_exact)| <= (1 + u_h) du + u_h |u_exact| + u_h |y|`` (``du`` = `update_atol`,
    ``u_h`` = unit roundoff of the half dtype), independently of how torch rounds inside
    the half base layer; likewise for the input gradient, and the float32 adapter gradients
    against the float64 oracle with float32 bounds."""
    layer = _half_layers(kind, dtype)
    uh = unit_roundoff(dtype)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    xh = x.to(dtype).requires_grad_(True)
    y = layer(xh)
    assert y.dtype == dtype
    x64 = _np(xh)
    D = oracle_delta(layer)
    base_h = _np(layer.base_layer(xh.detach()))              # the base layer's own output
    u_exact = x64 @ D.T
    du = update_atol(layer, "default", x64)
    atol = (1 + uh) * du + uh * np.abs(u_exact) + uh * np.abs(_np(y))
    assert_close(_np(y), base_h + u_exact, atol, "forward")
    # the update really is in y (a 50 % error in it is far above the bound)
    assert np.all(atol < 0.05 * np.abs(u_exact).max())
    # gradients of sum(y): g = 1 per output
    y.float().sum().backward()
    assert xh.grad is not None and xh.grad.dtype == dtype
    xb = xh.detach().clone().requires_grad_(True)
    layer.base_layer(xb).float().sum().backward()           # the base layer's own gradient
    g64 = np.ones((5, 8))
    gu = g64 @ D
    dgu = update_atol(layer, "default", g64, transpose=True)
    atol = (1 + uh) * dgu + uh * np.abs(gu) + uh * np.abs(_np(xh.grad))
    assert_close(_np(xh.grad), _np(xb.grad) + gu, atol, "grad x")
    G = g64.T @ x64
    _assert_adapter_grads(layer, kind, G, g64, x64,
                          lambda g: g.dtype == torch.float32)


def _fourierft_grad_oracle(G, rows, cols, scaling):
    """``d sum(G * dW) / d f_k = scaling Re(ifft2(E_k)) . G``, by explicit cosines."""
    d_out, d_in = G.shape
    u, v = np.meshgrid(np.arange(d_out), np.arange(d_in), indexing="ij")
    return np.array([scaling * np.sum(G * np.cos(2 * np.pi * (u * r / d_out + v * c / d_in)))
                     / (d_in * d_out) for r, c in zip(rows, cols)])


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
    da, db = oracle_delta(layer, "a"), oracle_delta(layer, "b")     # the oracle's deltas
    x64 = _np(x)
    ta, tb = update_atol(layer, "a", x64), update_atol(layer, "b", x64)
    assert_close(_np(layer(x)), x64 @ (da + db).T, ta + tb + EPS32 * np.abs(x64 @ (da + db).T),
                 "sum of both")
    layer.set_adapter("b")
    assert_close(_np(layer(x)), x64 @ db.T, tb, "b only")
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
    # a in the (zero) weight: its delta rounded once, then one float32 product with it
    wa = _np(layer.base_layer.weight)
    assert_close(wa, da, delta_atol(layer, "a") + EPS32 * np.abs(da), "a merged")
    merged = matmul_tolerance(x64, wa, np.float32) \
        + float(np.abs(wa - da).max()) * float(np.abs(x64).sum(axis=1).max())
    assert_close(_np(layer(x)), x64 @ (da + db).T, merged + tb + EPS32 * np.abs(x64 @ (da + db).T),
                 "a merged, b not")
    layer.delete_adapter("a")
    assert sorted(layer.configs) == ["b"] and layer.merged_adapters == []
    # round(round(0 + da) - da) = 0 up to the two float32 roundings
    assert np.abs(_np(layer.base_layer.weight)).max() <= 4 * EPS32 * np.abs(da).max()
    assert_close(_np(layer(x)), x64 @ db.T, tb, "after delete")


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
    W, D, x64 = _np(base.weight), oracle_delta(layer), _np(x)
    with layer.disable_adapters():
        assert layer.merged_adapters == []
        # the unmerged weight is W up to two float32 roundings of W + dW and of the
        # difference; the two products each within matmul_tolerance
        w_un = _np(layer.base_layer.weight)
        assert_close(w_un, W, 2 * EPS32 * (np.abs(W) + np.abs(D) + delta_atol(layer)),
                     "unmerged weight")
        atol = (float(np.abs(w_un - W).max()) * float(np.abs(x64).sum(axis=1).max())
                + 2 * matmul_tolerance(x64, W, np.float32))
        assert_close(_np(layer(x)), _np(base(x)), atol, "disabled output")
    assert layer.merged_adapters == ["default"]
    assert_close(_np(layer.base_layer.weight), _np(merged_w),
                 4 * EPS32 * (np.abs(W) + np.abs(D) + delta_atol(layer)), "merged again")


@pytest.mark.parametrize("kind", KINDS)
def test_conv1d_fan_in_fan_out(kind):
    require("transformers")
    torch.manual_seed(15)
    conv = _conv1d(16, 8)
    a = _make(kind, conv)
    assert a.fan_in_fan_out
    assert (a.in_features, a.out_features) == (16, 8)
    W, bias = _np(conv.weight).T, _np(conv.bias)              # Conv1D stores (in, out)
    D = oracle_delta(a)
    x = torch.randn(2, 3, 16)
    x64 = _np(x).reshape(-1, 16)
    expected = x64 @ (W + D).T + bias
    tol = layer_atol(a, x64)
    assert_close(_np(a(x)).reshape(-1, 8), expected, tol, "Conv1D adapter vs oracle")
    w0 = _np(conv.weight)
    a.merge()
    # the delta is added transposed: W^T + D^T, one rounding
    assert_close(_np(conv.weight), w0 + D.T,
                 np.transpose(delta_atol(a)) + EPS32 * (np.abs(w0) + np.abs(D.T)),
                 "merged Conv1D weight")
    assert_close(_np(a(x)).reshape(-1, 8), expected, tol, "merged Conv1D vs oracle")
    a.unmerge()
    assert_close(_np(conv.weight), w0,
                 2 * EPS32 * (np.abs(w0) + np.abs(D.T) + np.transpose(delta_atol(a))),
                 "unmerged Conv1D weight")


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_device_forward_backward_merge_against_oracle(kind, dtype, device):
    """On each device (the CPU run checks the same code path the GPU run takes), against the
    float64 oracle rather than against the other device: forward, input and adapter
    gradients, merge and unmerge."""
    torch.manual_seed(17)
    layer = _make(kind, torch.nn.Linear(64, 32)).to(device)
    layer.base_layer.to(dtype)
    u = unit_roundoff(dtype)
    x = torch.randn(4, 8, 64, generator=torch.Generator().manual_seed(2)).to(dtype)
    xd = x.to(device).requires_grad_(True)
    y = layer(xd)
    assert y.dtype == dtype and y.device.type == device
    x64 = _np(x).reshape(-1, 64)
    D = oracle_delta(layer)
    W, bias = base_weight(layer), _np(layer.base_layer.bias)
    expected = x64 @ (W + D).T + bias
    # float32 everywhere: layer_atol; bfloat16: the base product in bfloat16 ((k + 2) 2u per
    # Cauchy-Schwarz term) and two roundings of the sum (see test_half_precision_base)
    if dtype == torch.float32:
        atol = layer_atol(layer, x64)
    else:
        atol = ((64 + 2) * 2 * u * row_norms(x64).max() * row_norms(W).max()
                + (1 + u) * update_atol(layer, "default", x64)
                + u * np.abs(x64 @ D.T) + u * np.abs(_np(y).reshape(-1, 32)))
    assert_close(_np(y).reshape(-1, 32), expected, atol, "forward")
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    (y.float() * g.float().to(device)).sum().backward()
    g64 = _np(g).reshape(-1, 32)
    gx = g64 @ (W + D)
    if dtype == torch.float32:
        atol = layer_atol(layer, g64, transpose=True)
    else:
        atol = ((32 + 2) * 2 * u * row_norms(g64).max() * row_norms(W.T).max()
                + (1 + u) * update_atol(layer, "default", g64, transpose=True)
                + u * np.abs(g64 @ D) + u * np.abs(_np(xd.grad).reshape(-1, 64)))
    assert_close(_np(xd.grad).reshape(-1, 64), gx, atol, "grad x")
    G = g64.T @ x64
    _assert_adapter_grads(layer, kind, G, g64, x64, lambda g: g.device.type == device)
    # merge: the weight becomes W + D (one rounding to the weight's dtype), and the layer is
    # that plain linear layer; unmerge gives W back to two roundings
    w0 = _np(layer.base_layer.weight)
    layer.merge()
    assert layer.merged_adapters == ["default"]
    merged = _np(layer.base_layer.weight)
    assert_close(merged, W + D, delta_atol(layer) + (u + EPS32) * (np.abs(W + D) + np.abs(D)),
                 "merged weight")
    with torch.no_grad():
        ym = _np(layer(xd)).reshape(-1, 32)
    ref = x64 @ merged.T + bias
    assert_close(ym, ref, (64 + 2) * 2 * u * row_norms(x64).max() * row_norms(merged).max()
                 + u * np.abs(ref), "merged output")
    layer.unmerge()
    assert layer.merged_adapters == []
    assert_close(_np(layer.base_layer.weight), w0,
                 2 * (u + EPS32) * (np.abs(w0) + np.abs(D) + delta_atol(layer)),
                 "unmerged weight")


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

def _assert_adapter_grads(layer, kind, G, g64, x64, grad_ok):
    """Every trainable adapter tensor's gradient against its float64 oracle, for
    ``G = g64^T x64`` (float32 arithmetic; the sum over the ``len(x64)`` tokens adds
    ``(tokens + 2) eps``); ``grad_ok(grad)`` checks its dtype or device."""
    p = adapter_params(layer)
    sum_eps = (len(x64) + 2) * EPS32
    for name, param in layer.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None and grad_ok(param.grad), name
        attr = name.split(".")[0]
        if kind == "circulant":
            b, s = layer.configs["default"].block_size, layer.scale("default")
            expected = s * block_circulant_fold_oracle(G, b)
            atol = abs(s) * math.sqrt(b) * (3 * fft_relative_error(b, np.float32)
                                            + sum_eps) * token_pairs(g64, x64)
        elif kind == "fourierft":
            rows, cols = (_np(t).astype(int) for t in layer.positions("default"))
            expected = _fourierft_grad_oracle(G, rows, cols, 20.0)
            atol = fourierft_grad_tolerance(g64, x64, layer.out_features, layer.in_features,
                                            20.0, np.float32)
        else:
            expected = circulant_diagonal_gradient_oracle(p, attr, G)
            norms = circulant_diagonal_factor_norms(p)
            ops = float(np.prod(list(norms.values())))
            bb = layer.block_size("default")
            chain = circulant_diagonal_chain_error(bb, p["cd_kernel"].shape[1], 2, np.float32)
            own = (3 * fft_relative_error(bb, np.float32) * math.sqrt(bb)
                   if "kernel" in attr else 2 * EPS32)
            norm = norms.get(attr) or norms[(attr, 0)]        # factors=2: one inner factor
            atol = (2 * chain + own + sum_eps) * ops / norm * token_pairs(g64, x64)
        assert_close(_np(param.grad), expected, atol, f"grad {name}")
