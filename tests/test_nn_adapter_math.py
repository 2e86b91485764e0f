"""Adapter updates of circfft.nn against dense float64 oracles, on both routes and in both
compute dtypes.

The base layer has zero weight and bias, so the layer's output *is* the update (``0 + u`` is
exact) and the tolerances are those of the update alone.

- Routes (``circfft.config(adapter_route=...)``): "merged" computes ``x (W + dW)^T + bias`` in
  one matmul (CirculantAdapter and FourierFTAdapter on a float32/float64 ``nn.Linear``);
  "separate" runs the base layer plus the Fourier-domain update, the route CUDA tensors, half
  precision, hooked base layers and several pending adapters take.  Every test runs both and
  checks which one ran (CirculantDiagonalAdapter has only the separate route).
- Precision: a float64 model keeps its adapters in float64, and they must match the float64
  oracle within float64 bounds.
- Tolerances (tests/oracles.py): `adapter_update_tolerance` for a block-circulant product by
  transforms, `matmul_tolerance` for a dense product, `block_circulant_stage_error` for each
  factor of a chain, `fourierft_matmul_tolerance` / `fourierft_grad_tolerance` for FourierFT.
  Each bound is the sum of the two routes' bounds where a test runs both.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

from conftest import require

torch = require("torch")

from oracles import (adapter_update_tolerance, assert_close,  # noqa: E402
                     block_circulant_fold_oracle, block_circulant_matrix_oracle,
                     circulant_diagonal_chain_error, circulant_diagonal_factor_norms,
                     circulant_diagonal_gradient_oracle, circulant_diagonal_params_oracle,
                     fft_relative_error, fourierft_dense_oracle, fourierft_grad_tolerance,
                     fourierft_matmul_tolerance, matmul_tolerance, row_norms)

import circfft  # noqa: E402
import circfft.nn as cnn  # noqa: E402

TORCH_TO_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _np(t):
    return t.detach().to(torch.float64).cpu().numpy()


def _zero_linear(d_in, d_out, dtype):
    lin = torch.nn.Linear(d_in, d_out).to(dtype)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    return lin


def _inputs(d_in, gen, dtype):
    """Structured rows (impulse, constant, integers, zeros) and random rows, shape (2, 4, d)."""
    rows = [torch.zeros(d_in), torch.ones(d_in), torch.arange(d_in) % 7 - 3.0,
            torch.zeros(d_in)]
    rows[0][1 % d_in] = 1.0
    rand = torch.randn(4, d_in, generator=gen)
    return torch.cat([torch.stack(rows).float(), rand]).reshape(2, 4, d_in).to(dtype)


@pytest.fixture(params=["merged", "separate"])
def route(request):
    with circfft.config(adapter_route=request.param):
        yield request.param


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def tdtype(request):
    return request.param


@contextlib.contextmanager
def _routes_taken(layer):
    """Counts the forward calls that took the merged route and the separate update."""
    calls = {"merged": 0, "separate": 0}
    merged, update = layer._merged_linear, layer._update

    def merged_spy(*args):
        y = merged(*args)
        calls["merged"] += y is not None
        return y

    def update_spy(*args):
        calls["separate"] += 1
        return update(*args)

    layer._merged_linear, layer._update = merged_spy, update_spy
    try:
        yield calls
    finally:
        del layer._merged_linear
        del layer._update


def _check_route(calls, route, has_merged_route):
    taken = "merged" if route == "merged" and has_merged_route else "separate"
    other = "separate" if taken == "merged" else "merged"
    assert calls[taken] >= 1 and calls[other] == 0, (route, calls)


# ---------------------------------------------------------------------------------------------
# CirculantAdapter
# ---------------------------------------------------------------------------------------------
def _pairs(g64, x64):
    """``sum_t ||g_t||_2 ||x_t||_2``: what a gradient summed over the tokens is bounded by."""
    return float((row_norms(g64) * row_norms(x64)).sum())


@pytest.mark.parametrize("d_in,d_out,b", [(16, 8, 4), (12, 24, 4), (32, 32, 32), (18, 12, 3),
                                          (8, 8, 1)])
@pytest.mark.parametrize("scale", ["fan_in", "block", 0.37])
def test_circulant_matches_dense_oracle(d_in, d_out, b, scale, route, tdtype):
    dt = TORCH_TO_NUMPY[tdtype]
    eps = float(np.finfo(dt).eps)
    gen = torch.Generator().manual_seed(d_in * 100 + d_out + b)
    layer = cnn.CirculantAdapter(_zero_linear(d_in, d_out, tdtype), b, scale=scale,
                                 init="normal")
    s = {"fan_in": 1.0 / d_in, "block": 1.0 / b}.get(scale, scale)
    assert layer.scale("default") == pytest.approx(s)
    w = layer.circ_kernel["default"]
    assert w.shape == (d_out // b, d_in // b, b) and w.dtype == tdtype
    x = _inputs(d_in, gen, tdtype).requires_grad_(True)
    with _routes_taken(layer) as calls:
        y = layer(x)
    _check_route(calls, route, has_merged_route=True)
    assert y.dtype == tdtype
    w64, x64 = _np(w), _np(x).reshape(-1, d_in)
    D = s * block_circulant_matrix_oracle(w64)
    atol = adapter_update_tolerance(b, dt, s, w64, x64) + matmul_tolerance(x64, D, dt)
    assert_close(_np(y).reshape(-1, d_out), x64 @ D.T, atol, "forward")
    # The dense delta is an exact gather times the scale: one rounding.
    assert_close(_np(layer.delta_weight("default")), D, eps * np.abs(D), "delta_weight")
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(tdtype)
    (y * g).sum().backward()
    g64 = _np(g).reshape(-1, d_out)
    gx_atol = (adapter_update_tolerance(b, dt, s, w64.transpose(1, 0, 2), g64)
               + matmul_tolerance(g64, D.T, dt))
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ D, gx_atol, "grad x")
    # grad w[i, j] = s sum_t corr(g_t,i, x_t,j): per token the three transforms of a circulant
    # product (3 r sqrt(b) ||g_t|| ||x_t||), plus the sum over the T tokens and the scale.
    T = len(x64)
    gw = s * block_circulant_fold_oracle(g64.T @ x64, b)
    gw_atol = abs(s) * math.sqrt(b) * (3 * fft_relative_error(b, dt) + (T + 2) * eps) \
        * _pairs(g64, x64)
    assert w.grad.dtype == tdtype
    assert_close(_np(w.grad), gw, gw_atol, "grad kernel")
    assert layer.base_layer.weight.grad is None
    assert not layer.base_layer.weight.requires_grad


# ---------------------------------------------------------------------------------------------
# CirculantDiagonalAdapter: M = diag(D_0) C_1 diag(D_1) C_2 ... C_m diag(D_m)
# ---------------------------------------------------------------------------------------------
def _cd_layer(d_in, d_out, b, m, dtype, gen):
    torch.manual_seed(5)
    layer = cnn.CirculantDiagonalAdapter(_zero_linear(d_in, d_out, dtype), block_size=b,
                                         factors=m, init="normal")
    with torch.no_grad():   # random diagonals, so that a swapped diagonal cannot pass
        for p in (layer.cd_left["default"], layer.cd_right["default"]):
            p.copy_(torch.randn(p.shape, generator=gen))
        if m > 1:
            d = layer.cd_inner_diag["default"]
            d.copy_(torch.randn(d.shape, generator=gen))
    for _, p in layer.adapter_parameters("default"):
        assert p.dtype == dtype
    return layer


def _cd_params(layer):
    """The adapter's tensors as float64 arrays, by name."""
    return {attr: _np(p) for attr, p in layer.adapter_parameters("default")}


def _cd_chain_error(p, b, dt):
    return circulant_diagonal_chain_error(b, p["cd_kernel"].shape[1],
                                          1 + len(p.get("cd_inner_kernel", ())), dt)


@pytest.mark.parametrize("d_in,d_out,b,m", [(16, 8, 4, 1), (16, 16, None, 1), (12, 24, 4, 3),
                                            (8, 16, 8, 2)])
def test_circulant_diagonal_matches_dense_oracle(d_in, d_out, b, m, route, tdtype):
    dt = TORCH_TO_NUMPY[tdtype]
    eps = float(np.finfo(dt).eps)
    eps64 = float(np.finfo(np.float64).eps)
    gen = torch.Generator().manual_seed(d_in + 3 * d_out + m)
    layer = _cd_layer(d_in, d_out, b, m, tdtype, gen)
    bb = layer.block_size("default")
    p = _cd_params(layer)
    D = circulant_diagonal_params_oracle(p)
    x = _inputs(d_in, gen, tdtype).requires_grad_(True)
    with _routes_taken(layer) as calls:
        y = layer(x)
    _check_route(calls, route, has_merged_route=False)
    assert y.dtype == tdtype
    x64 = _np(x).reshape(-1, d_in)
    ops = float(np.prod(list(circulant_diagonal_factor_norms(p).values())))    # bound of ||M||_2
    # the float64 oracle's own products: (m + 1) dense products of length <= d_in
    oracle = (m + 1) * (d_in + 2) * eps64
    rel = _cd_chain_error(p, bb, dt) + oracle
    assert_close(_np(y).reshape(-1, d_out), x64 @ D.T, rel * ops * row_norms(x64).max(),
                 "forward")
    # delta_weight: m - 1 dense products of length d_in and 2m + 2 scalings, in the dtype
    assert_close(_np(layer.delta_weight("default")), D,
                 ((m - 1) * (d_in + 2) + 2 * m + 2) * eps * ops + oracle * ops, "delta_weight")
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(tdtype)
    (y * g).sum().backward()
    g64 = _np(g).reshape(-1, d_out)
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ D, rel * ops * row_norms(g64).max(),
                 "grad x")


@pytest.mark.parametrize("m", [1, 2, 3])
def test_circulant_diagonal_gradients_of_every_parameter(m, tdtype):
    """Gradients of cd_left, cd_kernel, cd_right, cd_inner_kernel, cd_inner_diag against the
    dense oracle (each parameter's gradient from the oracle by linearity)."""
    dt = TORCH_TO_NUMPY[tdtype]
    eps = float(np.finfo(dt).eps)
    eps64 = float(np.finfo(np.float64).eps)
    d_in, d_out, b = 8, 12, 4
    gen = torch.Generator().manual_seed(40 + m)
    layer = _cd_layer(d_in, d_out, b, m, tdtype, gen)
    p = _cd_params(layer)
    x = _inputs(d_in, gen, tdtype)
    y = layer(x)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(tdtype)
    (y * g).sum().backward()
    x64, g64 = _np(x).reshape(-1, d_in), _np(g).reshape(-1, d_out)
    T = len(x64)
    G = g64.T @ x64                                          # d loss / d M
    norms = circulant_diagonal_factor_norms(p)
    ops = float(np.prod(list(norms.values())))
    # Per token, the forward quantities entering the gradient and the backpropagated ones are
    # each off by the chain's relative error; the kernel gradient adds the three transforms of
    # a circular correlation (3 r sqrt(b)), a diagonal one rounding; the sum over the tokens
    # T eps; the float64 oracle its own products and the sum G = g^T x.
    chain = _cd_chain_error(p, b, dt)
    oracle = ((m + 1) * (d_in + 2) + T) * eps64
    names = {attr for attr, _ in layer.adapter_parameters("default")}
    assert names == ({"cd_left", "cd_kernel", "cd_right"}
                     | ({"cd_inner_kernel", "cd_inner_diag"} if m > 1 else set()))
    for attr, param in layer.adapter_parameters("default"):
        assert param.grad is not None and param.grad.dtype == tdtype, attr
        expected = circulant_diagonal_gradient_oracle(p, attr, G)
        kernel = attr in ("cd_kernel", "cd_inner_kernel")
        own = 3 * fft_relative_error(b, dt) * math.sqrt(b) if kernel else 2 * eps
        rel = 2 * chain + own + T * eps + oracle
        if attr in ("cd_inner_kernel", "cd_inner_diag"):       # one factor per index j
            atol = np.stack([np.full(expected.shape[1:], rel * ops / norms[(attr, j)])
                             for j in range(m - 1)])
        else:
            atol = rel * ops / norms[attr]
        assert_close(_np(param.grad), expected, atol * _pairs(g64, x64), f"grad {attr}")


# ---------------------------------------------------------------------------------------------
# FourierFTAdapter
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d_in,d_out,n", [(16, 8, 20), (12, 20, 240), (32, 16, 1)])
@pytest.mark.parametrize("grad_path", ["gather", "dense"])
def test_fourierft_matches_dense_oracle_and_peft_positions(d_in, d_out, n, grad_path, route,
                                                           tdtype):
    """(``grad_path``: how the merged route gets the spectrum gradient.)"""
    with circfft.config(fourierft_grad=grad_path):
        _check_fourierft(d_in, d_out, n, route, tdtype)


def _check_fourierft(d_in, d_out, n, route, tdtype):
    dt = TORCH_TO_NUMPY[tdtype]
    eps = float(np.finfo(dt).eps)
    torch.manual_seed(3)
    layer = cnn.FourierFTAdapter(_zero_linear(d_in, d_out, tdtype), n_frequency=n,
                                 scaling=15.0, random_loc_seed=41)
    idx = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(41))[:n]
    rows, cols = layer.positions("default")
    assert torch.equal(rows, idx // d_in) and torch.equal(cols, idx % d_in)
    assert "fourierft_rows_default" not in layer.state_dict()
    spec = layer.fourierft_spectrum["default"]
    assert spec.shape == (n,) and spec.dtype == tdtype and spec.abs().max() > 0
    f64 = _np(spec)
    r, c = _np(rows).astype(int), _np(cols).astype(int)
    D = fourierft_dense_oracle(f64, r, c, d_out, d_in, 15.0)
    gen = torch.Generator().manual_seed(4)
    x = _inputs(d_in, gen, tdtype).requires_grad_(True)
    with _routes_taken(layer) as calls:
        y = layer(x)
    _check_route(calls, route, has_merged_route=True)
    x64 = _np(x).reshape(-1, d_in)
    assert_close(_np(y).reshape(-1, d_out), x64 @ D.T,
                 fourierft_matmul_tolerance(f64, x64, d_out, d_in, 15.0, dt), "forward")
    # dW from one 2-d transform: off by r_2d ||dW||_F (normwise), plus its final rounding
    assert_close(_np(layer.delta_weight("default")), D,
                 fft_relative_error(d_in * d_out, dt) * np.linalg.norm(D)
                 + eps * np.abs(D), "delta_weight")
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(tdtype)
    (y * g).sum().backward()
    g64 = _np(g).reshape(-1, d_out)
    # the transposed map: the same bound with the roles of in and out exchanged
    assert_close(_np(x.grad).reshape(-1, d_in), g64 @ D,
                 fourierft_matmul_tolerance(f64, g64, d_in, d_out, 15.0, dt), "grad x")
    # d y / d f_k = scaling * Re(ifft2(E_k)) x: the dense gradient folded on the positions.
    G = g64.T @ x64                                      # (out, in)
    u, v = np.meshgrid(np.arange(d_out), np.arange(d_in), indexing="ij")
    gf = np.array([15.0 * np.sum(G * np.cos(2 * np.pi * (u * r[k] / d_out + v * c[k] / d_in)))
                   / (d_in * d_out) for k in range(n)])
    assert spec.grad.dtype == tdtype
    assert_close(_np(spec.grad), gf,
                 fourierft_grad_tolerance(g64, x64, d_out, d_in, 15.0, dt), "grad spectrum")


# ---------------------------------------------------------------------------------------------
# Non-contiguous and expanded inputs
# ---------------------------------------------------------------------------------------------
def _adapter(kind, d_in, d_out, dtype):
    torch.manual_seed(31)
    base = torch.nn.Linear(d_in, d_out).to(dtype)
    if kind == "circulant":
        return cnn.CirculantAdapter(base, 4, init="normal")
    if kind == "circulant_diagonal":
        return cnn.CirculantDiagonalAdapter(base, block_size=4, factors=2, init="normal")
    return cnn.FourierFTAdapter(base, n_frequency=30, scaling=20.0)


VIEWS = {
    # (parent shape for T tokens of d features, view of the parent with shape (T, d))
    "transposed": (lambda T, d: (d, T), lambda p: p.t()),
    "strided": (lambda T, d: (T, 2 * d + 1), lambda p: p[:, 1::2]),
    "offset": (lambda T, d: (T + 1, d + 3), lambda p: p[1:, 2:-1]),
    "expanded": (lambda T, d: (1, d), lambda p: p.expand(7, p.shape[1])),
    "broadcast_3d": (lambda T, d: (1, 1, d), lambda p: p.expand(2, 3, p.shape[-1])),
}


@pytest.mark.parametrize("kind", ["circulant", "circulant_diagonal", "fourierft"])
@pytest.mark.parametrize("view", list(VIEWS))
def test_non_contiguous_and_expanded_inputs(kind, view, route, tdtype):
    """A strided, transposed, offset or expanded (stride-0) x gives what a contiguous copy of
    it gives -- output, input gradient (accumulated into the viewed tensor) and adapter
    gradients -- and nothing is written into x's memory."""
    d_in, d_out, T = 16, 8, 7
    shape_of, view_of = VIEWS[view]
    parent = torch.randn(*shape_of(T, d_in), generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64).to(tdtype)
    results = []
    for contiguous in (False, True):
        layer = _adapter(kind, d_in, d_out, tdtype)
        leaf = parent.clone().requires_grad_(True)
        x = view_of(leaf)
        if contiguous:
            x = x.contiguous()
        else:
            assert not x.is_contiguous()
        y = layer(x)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64).to(tdtype)
        (y * g).sum().backward()
        assert torch.equal(leaf.detach(), parent), "the input was written to"
        results.append([y.detach(), leaf.grad] + [p.grad for _, p in
                                                  layer.adapter_parameters("default")])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
