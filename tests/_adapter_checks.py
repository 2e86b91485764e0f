"""Dense oracles and derived error bounds for whole adapter layers (circfft.nn), shared by the
adapter test modules.

The oracles themselves (dense matrices, FourierFT grids) are in ``oracles.py``; this module
reads a layer's tensors and configuration and feeds them to those oracles, so that no test
compares a layer with the layer's own ``delta_weight``.
"""
from __future__ import annotations

import numpy as np
import torch

import circfft.nn as cnn
from oracles import (adapter_update_tolerance, block_circulant_matrix_oracle,
                     circulant_diagonal_chain_error, circulant_diagonal_factor_norms,
                     circulant_diagonal_params_oracle, fft_relative_error,
                     fourierft_dense_oracle, fourierft_matmul_tolerance, matmul_tolerance,
                     row_norms)


def _np(t):
    return t.detach().to(torch.float64).cpu().numpy()


def adapter_params(layer, name="default"):
    return {attr: _np(p) for attr, p in layer.adapter_parameters(name)}


def oracle_delta(layer, name="default"):
    """Dense float64 update of adapter ``name`` from its tensors, by the oracles (never by the
    layer's own ``delta_weight``)."""
    p = adapter_params(layer, name)
    if isinstance(layer, cnn.CirculantAdapter):
        return layer.scale(name) * block_circulant_matrix_oracle(p["circ_kernel"])
    if isinstance(layer, cnn.CirculantDiagonalAdapter):
        return circulant_diagonal_params_oracle(p)
    rows, cols = (_np(t).astype(int) for t in layer.positions(name))
    return fourierft_dense_oracle(p["fourierft_spectrum"], rows, cols, layer.out_features,
                                  layer.in_features, layer.configs[name].scaling)


def delta_atol(layer, name="default"):
    """Per-element bound of ``layer.delta_weight(name)`` (compute dtype) against
    `oracle_delta`: a scaled gather (one rounding); the circulant-diagonal chain's dense
    products; FourierFT's 2-d transform (normwise ``r ||dW||_F``)."""
    D = oracle_delta(layer, name)
    dt = np.float64 if layer.compute_dtype == torch.float64 else np.float32
    eps = float(np.finfo(dt).eps)
    if isinstance(layer, cnn.CirculantAdapter):
        return eps * np.abs(D)
    if isinstance(layer, cnn.CirculantDiagonalAdapter):
        p = adapter_params(layer, name)
        m = layer.configs[name].factors
        ops = float(np.prod(list(circulant_diagonal_factor_norms(p).values())))
        return ((m - 1) * (layer.in_features + 2) + 2 * m + 2) * eps * ops
    return (fft_relative_error(layer.in_features * layer.out_features, dt)
            * np.linalg.norm(D) + eps * np.abs(D))


def update_atol(layer, name, x64, transpose=False, dt=np.float32):
    """Per-element bound of the computed update ``x dW^T`` (``g dW`` with ``transpose``) in the
    compute dtype ``dt`` against the oracle, for either route: the dense product of the merged
    route (`matmul_tolerance`, with the build of dW) plus the transform bound of the separate
    route."""
    D = oracle_delta(layer, name)
    Dm = D.T if transpose else D
    atol = matmul_tolerance(x64, Dm, dt) + float(np.abs(delta_atol(layer, name)).max()) \
        * float(np.abs(x64).sum(axis=-1).max())
    p = adapter_params(layer, name)
    if isinstance(layer, cnn.CirculantAdapter):
        w = p["circ_kernel"].transpose(1, 0, 2) if transpose else p["circ_kernel"]
        return atol + adapter_update_tolerance(layer.configs[name].block_size, dt,
                                               layer.scale(name), w, x64)
    if isinstance(layer, cnn.CirculantDiagonalAdapter):
        m = layer.configs[name].factors
        rel = circulant_diagonal_chain_error(layer.block_size(name), p["cd_kernel"].shape[1],
                                             m, dt)
        ops = float(np.prod(list(circulant_diagonal_factor_norms(p).values())))
        return atol + rel * ops * float(row_norms(x64).max())
    i, o = layer.in_features, layer.out_features
    if transpose:
        i, o = o, i
    return atol + fourierft_matmul_tolerance(p["fourierft_spectrum"], x64, o, i,
                                             layer.configs[name].scaling, dt)


def base_weight(layer):
    """The base weight in (out, in) orientation, float64."""
    w = _np(layer.base_layer.weight)
    return w.T if layer.fan_in_fan_out else w


def layer_atol(layer, x64, transpose=False, name="default"):
    """Per-element bound of an adapted layer's output ``base(x) + dW x`` (with ``transpose``
    its input gradient ``g (W + dW)``) in the compute dtype against float64, whichever route
    runs: the base product (separate route) and the merged product, plus `update_atol`."""
    dt = np.float64 if layer.compute_dtype == torch.float64 else np.float32
    W, D = base_weight(layer), oracle_delta(layer, name)
    if transpose:
        W, D = W.T, D.T
    return (matmul_tolerance(x64, W, dt) + matmul_tolerance(x64, W + D, dt)
            + update_atol(layer, name, x64, transpose, dt))


def token_pairs(g64, x64):
    """``sum_t ||g_t||_2 ||x_t||_2``: what a gradient summed over the tokens is bounded by."""
    return float((row_norms(g64) * row_norms(x64)).sum())


def pending_adapters(layer):
    """The adapters a forward adds to the base output (active, not merged, not disabled)."""
    if layer._disabled:
        return []
    return [n for n in layer.active_adapters if n not in layer.merged_adapters]


def check_layer_output(layer, x64, y64, what=""):
    """An adapter layer's output ``y64`` for the input rows ``x64`` (both float64 arrays, as
    recorded in a model run) against ``x (W + sum of the pending deltas)^T + bias`` from the
    oracles, ``W`` the layer's current base weight (merged adapters are in it): within the
    base and merged products and every pending update's bound, plus one rounding per sum.
    Returns ``(expected, atol)``."""
    from oracles import assert_close

    dt = np.float64 if layer.compute_dtype == torch.float64 else np.float32
    eps = float(np.finfo(dt).eps)
    W = base_weight(layer)
    bias = layer.base_layer.bias
    b = _np(bias) if bias is not None else 0.0
    pending = pending_adapters(layer)
    D = sum((oracle_delta(layer, n) for n in pending), np.zeros_like(W))
    expected = x64 @ (W + D).T + b
    atol = (matmul_tolerance(x64, W, dt) + matmul_tolerance(x64, W + D, dt)
            + sum(update_atol(layer, n, x64, dt=dt) for n in pending)
            + (len(pending) + 1) * eps * np.abs(expected))
    assert_close(y64, expected, atol, what)
    return expected, atol


def record_layer_io(model):
    """Context manager: forward hooks on every adapter layer of ``model`` recording
    ``{path: (x rows, y rows)}`` as float64 arrays (the last call of each layer)."""
    import contextlib

    @contextlib.contextmanager
    def recording():
        seen, handles = {}, []
        for path, module in model.named_modules():
            if isinstance(module, cnn.AdapterLayer):
                def hook(mod, args, out, path=path):
                    x = args[0]
                    seen[path] = (_np(x).reshape(-1, x.shape[-1]),
                                  _np(out).reshape(-1, out.shape[-1]))
                handles.append(module.register_forward_hook(hook))
        try:
            yield seen
        finally:
            for h in handles:
                h.remove()
    return recording()
