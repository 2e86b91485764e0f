"""circfft.nn.functional.fourierft_matmul / fourierft_delta_weight against PEFT's dense FourierFT.

Oracle: ``tests/oracles.py::peft_fourierft_delta_weight_oracle`` builds ``dW`` exactly as
PEFT's ``FourierFTLayer.get_delta_weight`` (dense grid, ``torch.fft.ifft2(...).real *
scaling``) in float64; the product is ``x @ dW.T``.  Tolerances: float64 results to
``fourierft_matmul_tolerance`` (derived there), float32 the same formula with float32 eps.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import require

torch = require("torch")

from circfft.nn import functional as F  # noqa: E402
from circfft.nn import _fourierft  # noqa: E402
from oracles import (assert_close, fourierft_grad_tolerance,  # noqa: E402
                     fourierft_matmul_tolerance, peft_fourierft_delta_weight_oracle,
                     peft_fourierft_positions)
from _autograd_spy import saved_tensors  # noqa: E402

SIZES = [(384, 384), (384, 1536), (1536, 384), (5, 7)]
ROUTES = ["fft", "dense"]
SCALING = 150.0


def _case(out_f, in_f, n, seed=0, tokens=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    rows, cols = peft_fourierft_positions(out_f, in_f, n)
    f = torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(*tokens, in_f, generator=g, dtype=torch.float64)
    return rows, cols, f, x


def _reference(x, f, rows, cols, out_f, scaling=SCALING):
    dW = peft_fourierft_delta_weight_oracle(f, rows, cols, out_f, x.shape[-1], scaling)
    return x.to(torch.float64) @ dW.T


def _check(y, ref, f, x, out_f, scaling, dtype, msg=""):
    tol = fourierft_matmul_tolerance(f.detach().numpy(), x.detach().numpy(), out_f,
                                     x.shape[-1], scaling, dtype)
    assert_close(y.detach().numpy(), ref.detach().numpy(), tol, msg)


# ---------------------------------------------------------------------------------------------
# Forward against the PEFT oracle
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_peft_oracle(size, route, dtype):
    out_f, in_f = size
    n = min(1000, out_f * in_f // 2)
    rows, cols, f, x = _case(out_f, in_f, n)
    ref = _reference(x, f, rows, cols, out_f)
    y = F.fourierft_matmul(x.to(dtype), f.to(dtype), rows, cols, out_f, SCALING, route=route)
    assert y.shape == (3, 4, out_f) and y.dtype == dtype
    _check(y, ref, f, x, out_f, SCALING, np.dtype(str(dtype).split(".")[-1]), f"{route}")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_delta_weight_matches_peft(size):
    out_f, in_f = size
    n = min(1000, out_f * in_f // 2)
    rows, cols, f, _ = _case(out_f, in_f, n)
    ref = peft_fourierft_delta_weight_oracle(f, rows, cols, out_f, in_f, SCALING)
    dW = F.fourierft_delta_weight(f, rows, cols, out_f, in_f, SCALING)
    # dW = x @ dW.T with x = identity rows (||x||_2 = 1)
    _check(dW.T, ref.T, f, torch.eye(in_f, dtype=torch.float64)[:1], out_f, SCALING,
           np.float64)


def _structured_positions(out_f, in_f):
    """DC / Nyquist / mirrored rows and columns (those that exist for the size)."""
    rs = sorted({0, out_f // 2, (out_f + 1) // 2 % out_f, out_f - 1, 1 % out_f})
    cs = sorted({0, in_f // 2, (in_f + 1) // 2 % in_f, in_f - 1, 1 % in_f})
    pos = sorted({(r, c) for r in rs for c in cs})
    return torch.tensor([p[0] for p in pos]), torch.tensor([p[1] for p in pos])


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("size", [(384, 384), (5, 7), (6, 8), (7, 6), (1, 1), (2, 3), (1, 5)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_structured_spectra(size, route):
    out_f, in_f = size
    rows, cols = _structured_positions(out_f, in_f)
    x = torch.randn(5, in_f, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # every position alone (single-entry spectrum), with an integer coefficient
    for k in range(rows.numel()):
        r, c = rows[k:k + 1], cols[k:k + 1]
        f = torch.tensor([3.0], dtype=torch.float64)
        y = F.fourierft_matmul(x, f, r, c, out_f, 2.0, route=route)
        _check(y, _reference(x, f, r, c, out_f, 2.0), f, x, out_f, 2.0, np.float64,
               f"entry ({int(r)}, {int(c)})")
    # all of them at once
    f = torch.arange(1.0, rows.numel() + 1, dtype=torch.float64)
    y = F.fourierft_matmul(x, f, rows, cols, out_f, 2.0, route=route)
    _check(y, _reference(x, f, rows, cols, out_f, 2.0), f, x, out_f, 2.0, np.float64)


@pytest.mark.parametrize("route", ROUTES)
def test_dc_entry_is_constant_matrix(route):
    # F[0, 0] = f alone: dW = scaling * f / (out*in) everywhere, so y = that * sum(x)
    x = torch.tensor([[1.0, 2.0, 3.0, -4.0, 5.0, 0.5, 7.0]], dtype=torch.float64)
    y = F.fourierft_matmul(x, torch.tensor([35.0], dtype=torch.float64), torch.tensor([0]),
                           torch.tensor([0]), 5, 2.0, route=route)
    expected = np.full((1, 5), 2.0 * 35.0 / 35.0 * float(x.sum()))
    f = np.array([35.0])
    assert_close(y.numpy(), expected,
                 fourierft_matmul_tolerance(f, x.numpy(), 5, 7, 2.0, np.float64))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", ["zeros", "constant", "impulse", "integers"])
def test_structured_inputs(kind, route):
    out_f, in_f, n = 12, 10, 30
    rows, cols, f, _ = _case(out_f, in_f, n)
    x = {"zeros": torch.zeros(4, in_f, dtype=torch.float64),
         "constant": torch.full((4, in_f), 2.5, dtype=torch.float64),
         "impulse": torch.eye(in_f, dtype=torch.float64)[:4],
         "integers": torch.arange(4 * in_f, dtype=torch.float64).reshape(4, in_f) % 7 - 3}[kind]
    y = F.fourierft_matmul(x, f, rows, cols, out_f, SCALING, route=route)
    if kind == "zeros":
        assert torch.count_nonzero(y) == 0
    _check(y, _reference(x, f, rows, cols, out_f), f, x, out_f, SCALING, np.float64)


def test_zero_spectrum_and_empty_batch():
    rows, cols, f, x = _case(8, 6, 10)
    assert torch.count_nonzero(F.fourierft_matmul(x, torch.zeros_like(f), rows, cols, 8, 1.0)) \
        == 0
    e = torch.empty(0, 6, dtype=torch.float64, requires_grad=True)
    y = F.fourierft_matmul(e, f, rows, cols, 8, 1.0, route="fft")
    assert y.shape == (0, 8)
    y.sum().backward()
    assert e.grad.shape == (0, 6)


def test_half_precision_input_computed_in_float32():
    rows, cols, f, x = _case(24, 16, 40)
    xb = x.to(torch.bfloat16)
    y = F.fourierft_matmul(xb, f.float(), rows, cols, 24, SCALING, route="fft")
    assert y.dtype == torch.float32
    ref = _reference(xb.to(torch.float64), f, rows, cols, 24)   # the rounded input, exactly
    _check(y, ref, f, xb.to(torch.float64), 24, SCALING, np.float32)


def test_matches_stock_peft_layer():
    peft = require("peft")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 12, dtype=torch.float64))
    cfg = peft.FourierFTConfig(target_modules=["0"], n_frequency=50, scaling=SCALING,
                               random_loc_seed=123)
    pm = peft.get_peft_model(model, cfg)
    layer = pm.base_model.model[0]
    with torch.no_grad():
        layer.fourierft_spectrum["default"].copy_(torch.randn(50))
    x = torch.randn(6, 20, dtype=torch.float64)
    with torch.no_grad():
        expected = pm(x) - layer.base_layer(x)
    rows, cols = layer.indices["default"]
    spectrum = layer.fourierft_spectrum["default"].detach()
    for route in ROUTES:
        y = F.fourierft_matmul(x, spectrum, rows, cols, 12, SCALING, route=route)
        # PEFT builds dW in float32 (its dense grid is float32): float32 tolerance
        _check(y, expected, spectrum, x, 12, SCALING, np.float32, route)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("size,n", [((5, 7), 35), ((6, 8), 20), ((4, 4), 16), ((1, 3), 2),
                                    ((3, 1), 3)], ids=str)
def test_gradcheck(size, n, route):
    out_f, in_f = size
    rows, cols, f, x = _case(out_f, in_f, n, tokens=(2, 3))
    f.requires_grad_()
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, f: F.fourierft_matmul(x, f, rows, cols, out_f, 3.0, route=route), (x, f))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("size", [(384, 1536), (1536, 384)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_gradients_match_oracle(size, route):
    out_f, in_f = size
    rows, cols, f, x = _case(out_f, in_f, 1000, tokens=(6,))
    gy = torch.randn(6, out_f, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    fr, xr = f.clone().requires_grad_(), x.clone().requires_grad_()
    (_reference(xr, fr, rows, cols, out_f) * gy).sum().backward()
    fc, xc = f.clone().requires_grad_(), x.clone().requires_grad_()
    (F.fourierft_matmul(xc, fc, rows, cols, out_f, SCALING, route=route) * gy).sum().backward()
    # grad_x = gy @ dW: the same map transposed, so the same bound with gy in place of x
    _check(xc.grad, xr.grad, f, gy, in_f, SCALING, np.float64, "grad x")
    # grad_f[k] = (scaling/(in*out)) sum_t Re(conj(G_t[rows_k]) conj(X_t[cols_k])) with G_t, X_t
    # the spectra of gy_t and x_t (derived in oracles.fourierft_grad_tolerance)
    tol = fourierft_grad_tolerance(gy.numpy(), x.numpy(), out_f, in_f, SCALING, np.float64)
    assert_close(fc.grad.numpy(), fr.grad.numpy(), tol, "grad spectrum")


def test_fft_route_saves_only_x():
    rows, cols, f, x = _case(64, 48, 200, tokens=(32,))
    x.requires_grad_()
    f.requires_grad_()
    with saved_tensors() as saved:
        y = F.fourierft_matmul(x, f, rows, cols, 64, SCALING, route="fft")
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].untyped_storage().data_ptr() == \
        x.untyped_storage().data_ptr()
    assert all(t.numel() <= 2 * f.numel() for t in saved if t is not big[0])
    y.sum().backward()
    assert x.grad.shape == x.shape and f.grad.shape == f.shape


@pytest.mark.parametrize("torch_fft", [False, True], ids=["numba-views", "torch-fft"])
def test_multichunk_and_torch_fft_path(torch_fft):
    """Many chunks (gradient sums accumulated over them), and the torch.fft transform path
    that CUDA tensors take without CuPy (forced on CPU tensors)."""
    import circfft

    with circfft.config(chunk_elements=64, torch_fft=torch_fft):
        out_f, in_f = 24, 20
        rows, cols, f, x = _case(out_f, in_f, 50, tokens=(37,))
        gy = torch.randn(37, out_f, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3))
        fr, xr = f.clone().requires_grad_(), x.clone().requires_grad_()
        (_reference(xr, fr, rows, cols, out_f) * gy).sum().backward()
        fc, xc = f.clone().requires_grad_(), x.clone().requires_grad_()
        y = F.fourierft_matmul(xc, fc, rows, cols, out_f, SCALING, route="fft")
        (y * gy).sum().backward()
    _check(y, _reference(x, f, rows, cols, out_f), f, x, out_f, SCALING, np.float64)
    _check(xc.grad, xr.grad, f, gy, in_f, SCALING, np.float64, "grad x")
    tol = fourierft_grad_tolerance(gy.numpy(), x.numpy(), out_f, in_f, SCALING, np.float64)
    assert_close(fc.grad.numpy(), fr.grad.numpy(), tol, "grad spectrum")


# ---------------------------------------------------------------------------------------------
# Route choice, operators, compile
# ---------------------------------------------------------------------------------------------
def test_auto_route():
    assert _fourierft.choose_route(4096, 768, 768, 1000) == "fft"
    assert _fourierft.choose_route(4096, 5, 7, 35) == "dense"
    rows, cols, f, x = _case(5, 7, 20)
    ref = _reference(x, f, rows, cols, 5)
    _check(F.fourierft_matmul(x, f, rows, cols, 5, SCALING), ref, f, x, 5, SCALING, np.float64)


def test_opcheck():
    rows, cols, f, x = _case(6, 7, 12, tokens=(5,))
    plan = _fourierft.fourierft_plan(rows, cols, 6, 7)
    ops = torch.ops.circfft
    torch.library.opcheck(ops.fourierft.default,
                          (x.requires_grad_(), f.requires_grad_(), *plan, 6, 0.3))
    gy = torch.randn(5, 6, dtype=torch.float64)
    torch.library.opcheck(ops.fourierft_backward.default,
                          (gy, x.detach(), f.detach(), *plan, 0.3, True, True))


def test_compile_fullgraph():
    rows, cols, f, x = _case(6, 8, 12, tokens=(4,))

    def loss(x, f):
        return F.fourierft_matmul(x, f, rows, cols, 6, 2.0, route="fft").sin().sum()

    xc, fc = x.clone().requires_grad_(), f.clone().requires_grad_()
    torch.compile(loss, fullgraph=True)(xc, fc).backward()
    # against the float64 oracle (inductor computes sin/cos its own way, so not bitwise the
    # eager result): g = cos(y) from the computed y (off by at most y_tol, |cos'| <= 1), then
    # the transposed map for x and the coefficient gradient for f
    xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
    y = _reference(xr, fr, rows, cols, 6, 2.0)
    y.sin().sum().backward()
    g = y.detach().cos().numpy()
    y_tol = fourierft_matmul_tolerance(f.numpy(), x.numpy(), 6, 8, 2.0, np.float64)
    dW = peft_fourierft_delta_weight_oracle(f, rows, cols, 6, 8, 2.0).numpy()
    tol_x = (fourierft_matmul_tolerance(f.numpy(), g, 8, 6, 2.0, np.float64)
             + y_tol * np.abs(dW).sum(axis=0).max())
    assert_close(xc.grad.numpy(), xr.grad.numpy(), tol_x, "grad x")
    # |d grad_f_k / d g| <= (2 / (6 * 8)) sum_t ||x_t||_1 (each entry of E_k is at most 1/N)
    tol_f = (fourierft_grad_tolerance(g, x.numpy(), 6, 8, 2.0, np.float64)
             + y_tol * 6 * 2.0 / 48 * float(np.abs(x.numpy()).sum()))
    assert_close(fc.grad.numpy(), fr.grad.numpy(), tol_f, "grad spectrum")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_input():
    rows, cols, f, x = _case(6, 8, 10)
    call = F.fourierft_matmul
    with pytest.raises(ValueError, match="route"):
        call(x, f, rows, cols, 6, 1.0, route="sparse")
    with pytest.raises(ValueError, match="rows"):
        call(x, f, rows + 6, cols, 6, 1.0)
    with pytest.raises(ValueError, match="cols"):
        call(x, f, rows, cols - 9, 6, 1.0)
    with pytest.raises(TypeError, match="rows"):
        call(x, f, rows.double(), cols, 6, 1.0)
    with pytest.raises(ValueError, match="cols"):
        call(x, f, rows, cols[:-1], 6, 1.0)
    with pytest.raises(TypeError, match="x"):
        call(x.numpy(), f, rows, cols, 6, 1.0)
    with pytest.raises(TypeError, match="spectrum"):
        call(x, f.to(torch.int64), rows, cols, 6, 1.0)
    with pytest.raises(TypeError, match="scaling"):
        call(x, f, rows, cols, 6, "150")
    with pytest.raises(ValueError, match="out_features"):
        call(x, f, rows, cols, 0, 1.0)
    with pytest.raises(ValueError, match="in_features"):
        F.fourierft_delta_weight(f, rows, cols, 6, 0, 1.0)
    x0 = x.clone()
    with pytest.raises(ValueError):
        call(x, f, rows, cols, 5, 1.0)                      # rows reach 5
    assert torch.equal(x, x0)
