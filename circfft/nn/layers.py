"""The adapter layers: block-circulant, circulant-diagonal and FourierFT updates of a frozen layer.

Every layer computes ``y = base_layer(x) + sum_a dW_a x`` over its *active, unmerged* adapters
``a``, all applied to the same ``x`` (PEFT's layout: ``base_layer`` / ``ParameterDict`` of
adapter tensors keyed by adapter name, so state-dict keys read
``<module path>.<dict name>.<adapter name>``).

Conventions settled here:

- **Orientation.**  ``delta_weight(name)`` has shape ``(out_features, in_features)``
  (``nn.Linear`` orientation), in the compute dtype (below).  HF ``Conv1D`` stores its weight as ``(in, out)``
  (``fan_in_fan_out=True``, detected from the module type, never from the config): only
  `merge` / `unmerge` transpose the delta for it.  The adapter tensors and FourierFT's entry
  grid are the same for both module types (PEFT does the same for FourierFT; its C3A has no
  ``Conv1D`` support).
- **Precision follows the model.**  The compute dtype is float64 for a float64 base layer
  and float32 otherwise (float16 / bfloat16 bases store half precision and compute in
  float32).  Adapter parameters are created in the compute dtype; the update is computed in
  it (``x`` and the parameters are cast only when they differ) and cast to the base output's
  dtype before the sum.  `merge` adds the delta to the weight in the compute dtype and rounds
  once; `unmerge` subtracts it the same way, which restores the original weight to one
  rounding of its dtype (float64 weights to float64 rounding).
- **Memory.**  The circulant updates call the functional operators with ``save_input=True``
  and FourierFT uses :func:`circfft.nn.functional.fourierft_matmul`: autograd then keeps a
  reference to ``x`` (which the base layer saves anyway) and nothing else of ``x``'s size
  (for a float16/bfloat16 ``x`` the float32 copy is what is kept).
  ``CirculantDiagonalAdapter`` with ``factors > 1`` must keep its ``factors - 1`` intermediate
  activations.
- **Merged route** (``circfft.config(adapter_route=...)``, :mod:`circfft.nn._merged`).  With
  one pending `CirculantAdapter` or `FourierFTAdapter` on a plain float32 or float64
  ``nn.Linear``/``Conv1D`` (no hooks, an ordinary weight tensor of ``x``'s dtype and device),
  the layer computes ``x (W + dW)^T + bias`` in one matmul; backward rebuilds ``W + dW`` for
  ``grad x`` and gets the kernel / spectrum gradient from the spectra of ``x`` and ``grad y``
  without forming ``grad y^T x``.  It saves ``x``, the frozen weight and the adapter tensors
  only.  "auto" takes it wherever it applies, on every device (the rule and its measurements
  are in ``docs/finetuning.rst``, "Memory and speed"); half precision, several pending adapters, hooked or sharded
  base layers take the separate route (base layer plus the structured update above).
- **Scale** (`CirculantAdapter`): the update is ``scale * C(circ_kernel) x`` with ``scale`` =
  ``1/in_features`` ("fan_in", PEFT C3A's; the C3A kernel ``k`` maps to
  ``circ_kernel = roll(flip(k, -1), 1, -1)``, docs/operators.rst, "Kernels from PEFT's C3A"), ``1/b`` ("block") or a float.
  The scale is applied to the (small) kernel, not to the output.
- **Several adapters** on one layer are summed on the same ``x`` (PEFT's C3A layer feeds each
  adapter the previous one's output; its LoRA sums them).  `set_adapter` chooses the active
  ones and makes only those trainable.
- **Disabling.**  ``with layer.disable_adapters():`` runs the base layer alone; adapters merged
  into the weight are unmerged on entry and merged again on exit.

FLOP counts (`adapter_cost`) are per token, forward only, counting a length-``n`` real FFT as
``2.5 n log2 n`` flops and a complex multiply-add on packed pairs as 4 flops per real slot.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import functional as F
from ._fourierft import fourierft_delta_weight as _fourierft_delta_weight
from ._layer_base import (SUPPORTED_BASE_TYPES, AdapterLayer, base_layer_shape,
                          compute_dtype, fft_flops, is_supported_base, valid_block_sizes,
                          where)
from ._merged import block_circulant_linear, fourierft_linear
from .config import CirculantConfig, CirculantDiagonalConfig, FourierFTConfig

__all__ = ["AdapterLayer", "CirculantAdapter", "CirculantDiagonalAdapter", "FourierFTAdapter",
           "SUPPORTED_BASE_TYPES", "base_layer_shape", "is_supported_base", "valid_block_sizes",
           "default_block_size", "compute_dtype", "LAYER_CLASSES"]


# save_input=True: the operators keep a reference to x (saved by the frozen base layer anyway)
# and recompute its spectrum in backward, instead of saving a new buffer of x's size.
def _bc_matmul(w, x):
    return F.block_circulant_matmul(w, x, save_input=True)


def _cd_matmul(a, w, g, x):
    return F.circulant_diagonal_matmul(a, w, g, x, save_input=True)


# ---------------------------------------------------------------------------------------------
# Block-circulant (C3A-compatible)
# ---------------------------------------------------------------------------------------------
def _scale_value(scale, in_features, block_size) -> float:
    if scale == "fan_in":
        return 1.0 / in_features
    if scale == "block":
        return 1.0 / block_size
    return float(scale)


class CirculantAdapter(AdapterLayer):
    """Block-circulant update ``dW = scale * C(circ_kernel)`` (docs/operators.rst and docs/finetuning.rst).

    Parameters
    ----------
    base_layer : nn.Linear or transformers.pytorch_utils.Conv1D
        Layer to adapt (frozen).
    block_size : int, optional
        Block size ``b``, dividing both dimensions.
    scale : {"fan_in", "block"} or float, optional
        See `circfft.nn.CirculantConfig`.
    init : {"zeros", "normal", "xavier_uniform", "kaiming_uniform"}, optional
        See `circfft.nn.CirculantConfig`.
    adapter_name : str, optional
        Name of the first adapter.
    config : CirculantConfig, optional
        Use this config instead of the three keywords above.

    Notes
    -----
    ``circ_kernel[name]`` (compute dtype) has shape ``(out/b, in/b, b)`` in the first-column
    convention: ``dW[i*b + r, j*b + s] = scale * circ_kernel[i, j, (r - s) % b]``.
    """

    adapter_param_names = ("circ_kernel",)
    config_class = CirculantConfig

    def __init__(self, base_layer, block_size=64, scale="fan_in", init="zeros", *,
                 adapter_name="default", config=None):
        super().__init__(base_layer, adapter_name,
                         config or CirculantConfig(block_size=block_size, scale=scale, init=init))

    def _create(self, name, config, device, dtype):
        b = config.block_size
        shape = (self.out_features // b, self.in_features // b, b)
        k = torch.zeros(shape, dtype=torch.float32)
        if config.init == "normal":
            nn.init.normal_(k)
        elif config.init == "xavier_uniform":
            a = math.sqrt(6.0 / (self.in_features + self.out_features))
            nn.init.uniform_(k, -a, a)
        elif config.init == "kaiming_uniform":
            a = math.sqrt(1.0 / self.in_features)
            nn.init.uniform_(k, -a, a)
        self.circ_kernel[name] = nn.Parameter(k.to(device=device, dtype=dtype))

    def scale(self, name: str) -> float:
        """The numeric output scale of adapter ``name``."""
        cfg = self.configs[name]
        return _scale_value(cfg.scale, self.in_features, cfg.block_size)

    def _update(self, name, xc):
        # Scaling the kernel (in/b * out/b * b numbers) is cheaper than scaling the output.
        return _bc_matmul(self._param("circ_kernel", name, xc.dtype) * self.scale(name), xc)

    def _merged_linear(self, name, x, weight, bias):
        return block_circulant_linear(x, weight, bias,
                                      self._param("circ_kernel", name, weight.dtype),
                                      self.scale(name))

    def delta_weight(self, name):
        self._check_name(name, must_exist=True)
        return F.block_circulant_dense(self._param("circ_kernel", name)) * self.scale(name)

    def adapter_cost(self, name):
        b = self.configs[name].block_size
        i, o = self.in_features, self.out_features
        params = i * o // b
        flops = (i // b + o // b) * fft_flops(b) + 4.0 * i * o / b
        return {"params": params, "flops_per_token": flops}


# ---------------------------------------------------------------------------------------------
# Circulant-diagonal (CDVFT)
# ---------------------------------------------------------------------------------------------
def default_block_size(in_features: int, out_features: int) -> int:
    """Largest power of two dividing both dimensions."""
    g = math.gcd(int(in_features), int(out_features))
    return g & -g


class CirculantDiagonalAdapter(AdapterLayer):
    """Circulant-diagonal update ``dW = D_0 C_1 D_1 C_2 ... C_m D_m`` (``docs/operators.rst``, "Circulant-diagonal products").

    Parameters
    ----------
    base_layer : nn.Linear or transformers.pytorch_utils.Conv1D
        Layer to adapt (frozen).
    block_size : int or None, optional
        Block size of the circulant factors; None: the largest power of two dividing both
        dimensions.
    factors : int, optional
        Number ``m`` of circulant factors (see `circfft.nn.CirculantDiagonalConfig`).
    init : {"zeros", "normal"}, optional
        ``"zeros"`` gives ``dW = 0`` with a non-zero gradient for ``cd_left``.
    adapter_name : str, optional
        Name of the first adapter.
    config : CirculantDiagonalConfig, optional
        Use this config instead of the keywords above.

    Notes
    -----
    Tensors (compute dtype): ``cd_left[name]`` = ``D_0`` (out,), ``cd_kernel[name]`` = ``C_1``
    (out/b, in/b, b), ``cd_right[name]`` = ``D_m`` (in,).  For ``m > 1`` also
    ``cd_inner_kernel[name]`` (m-1, in/b, in/b, b), entry ``j`` being ``C_{j+2}``, and
    ``cd_inner_diag[name]`` (m-1, in), entry ``j`` being ``D_{j+1}``.
    """

    adapter_param_names = ("cd_left", "cd_kernel", "cd_right", "cd_inner_kernel",
                           "cd_inner_diag")
    config_class = CirculantDiagonalConfig

    def __init__(self, base_layer, block_size=None, factors=1, init="zeros", *,
                 adapter_name="default", config=None):
        super().__init__(base_layer, adapter_name, config or CirculantDiagonalConfig(
            block_size=block_size, factors=factors, init=init))

    def block_size(self, name: str) -> int:
        """The block size adapter ``name`` uses (resolving None)."""
        b = self.configs[name].block_size
        return default_block_size(self.in_features, self.out_features) if b is None else b

    def _create(self, name, config, device, dtype):
        i, o = self.in_features, self.out_features
        b = config.block_size or default_block_size(i, o)
        m = config.factors
        bound = 1.0 / math.sqrt(i)      # nn.Linear's default bound: unit-gain kernels

        def kernel(*shape):
            return nn.Parameter(torch.empty(shape, dtype=torch.float32).uniform_(
                -bound, bound).to(device=device, dtype=dtype))

        def const(value, *shape):
            return nn.Parameter(torch.full(shape, value, dtype=dtype, device=device))

        self.cd_left[name] = const(0.0 if config.init == "zeros" else 1.0, o)
        self.cd_kernel[name] = kernel(o // b, i // b, b)
        self.cd_right[name] = const(1.0, i)
        if m > 1:
            self.cd_inner_kernel[name] = kernel(m - 1, i // b, i // b, b)
            self.cd_inner_diag[name] = const(1.0, m - 1, i)

    def _update(self, name, xc):
        dt = xc.dtype
        left, kernel, right = (self._param(a, name, dt) for a in ("cd_left", "cd_kernel",
                                                                  "cd_right"))
        m = self.configs[name].factors
        if m == 1:
            return _cd_matmul(left, kernel, right, xc)
        inner_k = self._param("cd_inner_kernel", name, dt)
        inner_d = self._param("cd_inner_diag", name, dt)
        # Apply D_m, C_m, D_{m-1}, ..., C_2, D_1, then C_1 and D_0 (see the class notes).
        u = _cd_matmul(inner_d[m - 2], inner_k[m - 2], right, xc)
        for j in range(m - 3, -1, -1):
            u = inner_d[j] * F.block_circulant_matmul(inner_k[j], u)
        return left * F.block_circulant_matmul(kernel, u)

    def delta_weight(self, name):
        self._check_name(name, must_exist=True)
        m = self.configs[name].factors
        dense = F.block_circulant_dense(self._param("cd_kernel", name))
        for j in range(m - 1):
            dense = (dense * self._param("cd_inner_diag", name)[j]) @ \
                F.block_circulant_dense(self._param("cd_inner_kernel", name)[j])
        return self._param("cd_left", name)[:, None] * dense * self._param("cd_right", name)

    def adapter_cost(self, name):
        i, o = self.in_features, self.out_features
        b, m = self.block_size(name), self.configs[name].factors
        params = o + m * i + (m - 1) * i * i // b + o * i // b
        flops = ((i // b + o // b) * fft_flops(b) + 4.0 * i * o / b + i + o
                 + (m - 1) * (2 * (i // b) * fft_flops(b) + 4.0 * i * i / b + i))
        return {"params": params, "flops_per_token": flops}


# ---------------------------------------------------------------------------------------------
# FourierFT (PEFT-compatible)
# ---------------------------------------------------------------------------------------------
class FourierFTAdapter(AdapterLayer):
    """FourierFT update dW = scaling * Re(ifft2(F)), as in PEFT, without building dW.

    Parameters
    ----------
    base_layer : nn.Linear or transformers.pytorch_utils.Conv1D
        Layer to adapt (frozen).
    n_frequency : int, optional
        Number of trainable spectral entries (at most ``in * out``).
    scaling : float, optional
        Output scale.
    random_loc_seed : int, optional
        Seed of the entry positions (PEFT's rule, see `circfft.nn.FourierFTConfig`).
    init_weights : bool, optional
        False: ``torch.randn`` spectrum (PEFT's default); True: zeros.
    adapter_name : str, optional
        Name of the first adapter.
    config : FourierFTConfig, optional
        Use this config instead of the keywords above.

    Notes
    -----
    ``fourierft_spectrum[name]`` (compute dtype) has shape (n_frequency,); the positions are
    non-persistent buffers ``fourierft_rows_<name>`` / ``fourierft_cols_<name>`` recomputed from
    the seed, on the ``(out, in)`` grid for ``nn.Linear`` and ``Conv1D`` alike (PEFT's
    ``in_features`` for ``Conv1D`` is ``weight.shape[0]``, the true input size).  The forward
    uses :func:`circfft.nn.functional.fourierft_matmul` (docs/finetuning.rst, "The adapters").
    """

    adapter_param_names = ("fourierft_spectrum",)
    config_class = FourierFTConfig

    def __init__(self, base_layer, n_frequency=1000, scaling=150.0, random_loc_seed=777,
                 init_weights=False, *, adapter_name="default", config=None):
        super().__init__(base_layer, adapter_name, config or FourierFTConfig(
            n_frequency=n_frequency, scaling=scaling, random_loc_seed=random_loc_seed,
            init_weights=init_weights))

    @classmethod
    def check_config(cls, config, in_features, out_features, name=""):
        super().check_config(config, in_features, out_features, name)
        if config.n_frequency > in_features * out_features:
            raise ValueError(f"n_frequency={config.n_frequency} exceeds in_features * "
                             f"out_features = {in_features} * {out_features} = "
                             f"{in_features * out_features}{where(name)}")

    @staticmethod
    def entry_positions(in_features, out_features, n_frequency, seed):
        """``(rows, cols)`` int64 tensors of PEFT's entry positions on the (out, in) grid."""
        idx = torch.randperm(out_features * in_features,
                             generator=torch.Generator().manual_seed(seed))[:n_frequency]
        return idx // in_features, idx % in_features

    def _create(self, name, config, device, dtype):
        rows, cols = self.entry_positions(self.in_features, self.out_features,
                                          config.n_frequency, config.random_loc_seed)
        self.register_buffer(f"fourierft_rows_{name}", rows.to(device), persistent=False)
        self.register_buffer(f"fourierft_cols_{name}", cols.to(device), persistent=False)
        # Draw as PEFT does (randn, then zeros if asked) so the global RNG advances the same.
        spectrum = torch.randn(config.n_frequency)
        if config.init_weights:
            spectrum.zero_()
        self.fourierft_spectrum[name] = nn.Parameter(spectrum.to(device=device, dtype=dtype))

    def _delete_extra(self, name):
        delattr(self, f"fourierft_rows_{name}")
        delattr(self, f"fourierft_cols_{name}")

    def positions(self, name: str):
        """``(rows, cols)`` buffers of adapter ``name``."""
        return getattr(self, f"fourierft_rows_{name}"), getattr(self, f"fourierft_cols_{name}")

    def _merged_linear(self, name, x, weight, bias):
        rows, cols = self.positions(name)
        spectrum = self._param("fourierft_spectrum", name, weight.dtype)
        return fourierft_linear(x, weight, bias, spectrum, rows, cols,
                                float(self.configs[name].scaling))

    def _update(self, name, xc):
        rows, cols = self.positions(name)
        spectrum = self._param("fourierft_spectrum", name, xc.dtype)
        return F.fourierft_matmul(xc, spectrum, rows, cols, self.out_features,
                                  self.configs[name].scaling)

    def delta_weight(self, name):
        self._check_name(name, must_exist=True)
        rows, cols = self.positions(name)
        return _fourierft_delta_weight(self._param("fourierft_spectrum", name), rows, cols,
                                       self.out_features, self.in_features,
                                       float(self.configs[name].scaling), self.compute_dtype)

    def adapter_cost(self, name):
        n = self.configs[name].n_frequency
        flops = fft_flops(self.in_features) + 4.0 * n + fft_flops(self.out_features)
        return {"params": n, "flops_per_token": flops}


#: adapter_type -> layer class (used by :func:`circfft.nn.inject`).
LAYER_CLASSES = {
    CirculantConfig.adapter_type: CirculantAdapter,
    CirculantDiagonalConfig.adapter_type: CirculantDiagonalAdapter,
    FourierFTConfig.adapter_type: FourierFTAdapter,
}
