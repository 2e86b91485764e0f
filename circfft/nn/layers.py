"""Adapter layers: a frozen ``nn.Linear`` (or HF ``Conv1D``) plus trainable structured updates.

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
  are in the fine-tuning guide); half precision, several pending adapters, hooked or sharded
  base layers take the separate route (base layer plus the structured update above).
- **Scale** (`CirculantAdapter`): the update is ``scale * C(circ_kernel) x`` with ``scale`` =
  ``1/in_features`` ("fan_in", PEFT C3A's; the C3A kernel ``k`` maps to
  ``circ_kernel = roll(flip(k, -1), 1, -1)``, DESIGN §5), ``1/b`` ("block") or a float.
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

import contextlib
import math
import sys
import warnings

import torch
from torch import nn

from .._config import get_config
from . import functional as F
from ._fourierft import fourierft_delta_weight as _fourierft_delta_weight
from ._merged import block_circulant_linear, fourierft_linear
from .config import (AdapterConfig, CirculantConfig, CirculantDiagonalConfig,
                     FourierFTConfig)

__all__ = ["AdapterLayer", "CirculantAdapter", "CirculantDiagonalAdapter", "FourierFTAdapter",
           "SUPPORTED_BASE_TYPES", "base_layer_shape", "is_supported_base", "valid_block_sizes",
           "default_block_size",
           "LAYER_CLASSES"]

#: Human-readable names of the module types an adapter can wrap.
SUPPORTED_BASE_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


# ---------------------------------------------------------------------------------------------
# Base-module inspection
# ---------------------------------------------------------------------------------------------
def _is_conv1d(module) -> bool:
    # A model holding a Conv1D has imported transformers already: never import it here.
    mod = sys.modules.get("transformers.pytorch_utils")
    return mod is not None and isinstance(module, mod.Conv1D)


def is_supported_base(module) -> bool:
    """True for ``nn.Linear`` and HF ``Conv1D`` (the module types an adapter can wrap)."""
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def base_layer_shape(module, name: str = "base_layer"):
    """``(in_features, out_features, fan_in_fan_out)`` of a supported base module.

    Raises
    ------
    TypeError
        ``module`` is neither ``nn.Linear`` nor HF ``Conv1D`` (the message names ``name``, the
        module's type and the supported types).
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if _is_conv1d(module):
        nx, nf = module.weight.shape          # Conv1D stores (in, out)
        return int(nx), int(nf), True
    raise TypeError(f"module '{name}' is a {type(module).__module__}.{type(module).__name__}, "
                    f"which circfft adapters cannot wrap; supported types: "
                    f"{', '.join(SUPPORTED_BASE_TYPES)}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def valid_block_sizes(in_features: int, out_features: int) -> list[int]:
    """Every block size that divides both dimensions (the divisors of their gcd), ascending."""
    return _divisors(math.gcd(int(in_features), int(out_features)))


def _block_size_error(b, in_features, out_features, where):
    sizes = valid_block_sizes(in_features, out_features)
    pow2 = [d for d in sizes if d & (d - 1) == 0]
    return ValueError(
        f"block_size={b} does not divide in_features={in_features} and "
        f"out_features={out_features}{where}; valid block sizes: powers of two {pow2}, "
        f"all common divisors {sizes}")


def _where(name):
    return f" of layer '{name}'" if name else ""


# ---------------------------------------------------------------------------------------------
# Functional helpers
# ---------------------------------------------------------------------------------------------
# save_input=True: the operators keep a reference to x (saved by the frozen base layer anyway)
# and recompute its spectrum in backward, instead of saving a new buffer of x's size.
def _bc_matmul(w, x):
    return F.block_circulant_matmul(w, x, save_input=True)


def _cd_matmul(a, w, g, x):
    return F.circulant_diagonal_matmul(a, w, g, x, save_input=True)


def compute_dtype(dtype) -> torch.dtype:
    """Adapter arithmetic for data of ``dtype``: float64 stays float64, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fft_flops(n: int) -> float:
    return 2.5 * n * math.log2(n) if n > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# The shared layer
# ---------------------------------------------------------------------------------------------
class AdapterLayer(nn.Module):
    """A frozen base layer plus named, trainable adapters (abstract; see the subclasses).

    Parameters
    ----------
    base_layer : nn.Linear or transformers.pytorch_utils.Conv1D
        The wrapped layer; its parameters are frozen (``requires_grad=False``).

    Attributes
    ----------
    base_layer : nn.Module
        The wrapped module itself (the same object, so `circfft.nn.unload` can put it back).
    in_features, out_features : int
        Dimensions of the linear map.
    fan_in_fan_out : bool
        True when the base weight is stored ``(in, out)`` (``Conv1D``).
    configs : dict[str, AdapterConfig]
        Config of every adapter on this layer.
    active_adapters : list[str]
        Adapters applied in `forward` (and merged by default by `merge`).
    merged_adapters : list[str]
        Adapters currently added into the base weight, in merge order.
    """

    #: Names of this class's ``nn.ParameterDict`` attributes.
    adapter_param_names: tuple[str, ...] = ()
    #: Config class this layer takes.
    config_class: type = AdapterConfig

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        in_f, out_f, fifo = base_layer_shape(base_layer)
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features, self.fan_in_fan_out = in_f, out_f, fifo
        self.configs: dict[str, AdapterConfig] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self._disabled = False
        for attr in self.adapter_param_names:
            setattr(self, attr, nn.ParameterDict())

    # -- to be provided by subclasses ---------------------------------------------------------
    @classmethod
    def check_config(cls, config, in_features: int, out_features: int, name: str = ""):
        """Raise ValueError if ``config`` cannot be applied to an ``out x in`` layer.

        ``name`` (the module's path) only goes into the message.  Called by
        :func:`circfft.nn.inject` for every target before any module is replaced.
        """
        if not isinstance(config, cls.config_class):
            raise TypeError(f"{cls.__name__} takes a {cls.config_class.__name__}, got "
                            f"{type(config).__name__}")

    def _create(self, name: str, config, device, dtype):
        """Create adapter ``name``'s tensors on ``device`` in ``dtype`` (drawn in float32, so
        that random initialisation consumes the generator as PEFT does)."""
        raise NotImplementedError

    def _update(self, name: str, xc: torch.Tensor) -> torch.Tensor:
        """``dW_name x`` for ``xc`` of shape (..., in_features) in the compute dtype."""
        raise NotImplementedError

    def delta_weight(self, name: str) -> torch.Tensor:
        """Dense update of adapter ``name``, shape ``(out_features, in_features)``, in the
        compute dtype of the base weight (float64 for float64 weights, else float32)."""
        raise NotImplementedError

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 for a float64 base weight, float32 otherwise (half precision included)."""
        return compute_dtype(self.base_layer.weight.dtype)

    def _param(self, attr: str, name: str, dtype=None) -> torch.Tensor:
        """Adapter tensor ``attr[name]`` in ``dtype`` (default: the compute dtype)."""
        p = getattr(self, attr)[name]
        dtype = self.compute_dtype if dtype is None else dtype
        return p if p.dtype == dtype else p.to(dtype)

    def adapter_cost(self, name: str) -> dict:
        """``{"params": int, "flops_per_token": float}`` of adapter ``name`` (forward)."""
        raise NotImplementedError

    # -- adapter management -------------------------------------------------------------------
    def _check_name(self, name, must_exist):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"adapter name must be a non-empty str without '.', got {name!r}")
        if must_exist and name not in self.configs:
            raise ValueError(f"adapter {name!r} is not on this layer; it has "
                             f"{sorted(self.configs)}")

    def add_adapter(self, name: str, config) -> None:
        """Add adapter ``name`` built from ``config`` and make it active (and trainable).

        Raises
        ------
        ValueError
            ``name`` already present or invalid, or ``config`` does not fit this layer.
        TypeError
            ``config`` of the wrong class.
        """
        self._check_name(name, must_exist=False)
        if name in self.configs:
            raise ValueError(f"adapter {name!r} already exists on this layer "
                             f"(adapters: {sorted(self.configs)})")
        self.check_config(config, self.in_features, self.out_features)
        if config.fan_in_fan_out and not self.fan_in_fan_out:
            warnings.warn("fan_in_fan_out=True but the base layer is nn.Linear (weight stored "
                          "(out, in)); using fan_in_fan_out=False", stacklevel=2)
        self._create(name, config, self.base_layer.weight.device, self.compute_dtype)
        self.configs[name] = config
        self.active_adapters.append(name)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (subtracting it from the weight first if merged)."""
        self._check_name(name, must_exist=True)
        if name in self.merged_adapters:
            self._add_to_weight(self.delta_weight(name), -1.0)
            self.merged_adapters.remove(name)
        for attr in self.adapter_param_names:
            store = getattr(self, attr)
            if name in store:
                del store[name]
        self._delete_extra(name)
        del self.configs[name]
        if name in self.active_adapters:
            self.active_adapters.remove(name)

    def _delete_extra(self, name):
        pass

    def set_adapter(self, names) -> None:
        """Make ``names`` (a str or list of str) the active adapters; only they are trainable."""
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            self._check_name(n, must_exist=True)
        self.active_adapters = names
        for attr in self.adapter_param_names:
            for key, p in getattr(self, attr).items():
                p.requires_grad_(key in names)

    def adapter_parameters(self, name: str):
        """The trainable tensors of adapter ``name`` as ``(dict name, Parameter)`` pairs."""
        return [(attr, getattr(self, attr)[name]) for attr in self.adapter_param_names
                if name in getattr(self, attr)]

    # -- merging ------------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @torch.no_grad()
    def _add_to_weight(self, delta: torch.Tensor, sign: float) -> None:
        weight = self.base_layer.weight
        cd = self.compute_dtype
        delta = delta.T if self.fan_in_fan_out else delta
        new = weight.to(cd) + sign * delta.to(device=weight.device, dtype=cd)
        weight.copy_(new.to(weight.dtype))

    def merge(self, adapter_names=None) -> None:
        """Add adapters into the base weight (default: the active ones not merged yet).

        The delta is added in the compute dtype and the sum rounded once to the weight's
        dtype.
        """
        if adapter_names is None:
            adapter_names = self.active_adapters
        elif isinstance(adapter_names, str):
            adapter_names = [adapter_names]
        for n in adapter_names:
            self._check_name(n, must_exist=True)
        for n in adapter_names:
            if n in self.merged_adapters:
                continue
            self._add_to_weight(self.delta_weight(n), 1.0)
            self.merged_adapters.append(n)

    def unmerge(self) -> None:
        """Subtract every merged adapter from the base weight, last merged first."""
        while self.merged_adapters:
            n = self.merged_adapters.pop()
            self._add_to_weight(self.delta_weight(n), -1.0)

    @contextlib.contextmanager
    def disable_adapters(self):
        """Context in which the layer is its base layer (merged adapters are taken out)."""
        merged = list(self.merged_adapters)
        was = self._disabled
        self.unmerge()
        self._disabled = True
        try:
            yield self
        finally:
            self._disabled = was
            self.merge(merged)

    # -- forward ------------------------------------------------------------------------------
    def _merged_linear(self, name: str, x, weight, bias):
        """``x @ (weight + dW_name)^T + bias`` as one matmul, or None (no such route)."""
        return None

    def _merged_route_weight(self, x, args, kwargs):
        """The base weight in ``(out, in)`` orientation when the merged route applies, else None.

        The merged route computes base layer and update in one matmul (see `_merged_linear`).
        It bypasses ``base_layer.forward``, so it is taken only for a plain ``nn.Linear`` /
        ``Conv1D`` without hooks, whose float32 or float64 weight is an ordinary tensor (not
        a sharded DTensor or another subclass) of ``x``'s dtype on ``x``'s device.
        """
        base = self.base_layer
        weight = getattr(base, "weight", None)
        route = "auto" if torch.compiler.is_compiling() else get_config().adapter_route
        if (args or kwargs or route == "separate"
                or x.dtype not in (torch.float32, torch.float64)
                or type(weight) not in (nn.Parameter, torch.Tensor)
                or weight.dtype != x.dtype or weight.device != x.device
                or base._forward_hooks or base._forward_pre_hooks
                or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks):
            return None
        if type(base) is nn.Linear:
            return weight
        if self.fan_in_fan_out and _is_conv1d(base):
            return weight.t()
        return None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        pending = [] if self._disabled else [n for n in self.active_adapters
                                             if n not in self.merged_adapters]
        if len(pending) == 1:
            weight = self._merged_route_weight(x, args, kwargs)
            if weight is not None:
                y = self._merged_linear(pending[0], x, weight,
                                        getattr(self.base_layer, "bias", None))
                if y is not None:
                    return y
        result = self.base_layer(x, *args, **kwargs)
        if not pending:
            return result
        # No copy of x when it is in the compute dtype already (autograd saves x only once).
        cd = compute_dtype(x.dtype)
        xc = x if x.dtype == cd else x.to(cd)
        update = None
        for n in pending:
            u = self._update(n, xc)
            update = u if update is None else update + u
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fan_in_fan_out={self.fan_in_fan_out}, adapters={sorted(self.configs)}, "
                f"active={self.active_adapters}, merged={self.merged_adapters}")


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
    """Block-circulant update ``dW = scale * C(circ_kernel)`` (DESIGN §4-5).

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
        if config is None:
            config = CirculantConfig(block_size=block_size, scale=scale, init=init)
        super().__init__(base_layer)
        self.add_adapter(adapter_name, config)

    @classmethod
    def check_config(cls, config, in_features, out_features, name=""):
        super().check_config(config, in_features, out_features, name)
        b = config.block_size
        if in_features % b or out_features % b:
            raise _block_size_error(b, in_features, out_features, _where(name))

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
        flops = (i // b + o // b) * _fft_flops(b) + 4.0 * i * o / b
        return {"params": params, "flops_per_token": flops}


# ---------------------------------------------------------------------------------------------
# Circulant-diagonal (CDVFT)
# ---------------------------------------------------------------------------------------------
def default_block_size(in_features: int, out_features: int) -> int:
    """Largest power of two dividing both dimensions."""
    g = math.gcd(int(in_features), int(out_features))
    return g & -g


class CirculantDiagonalAdapter(AdapterLayer):
    """Circulant-diagonal update ``dW = D_0 C_1 D_1 C_2 ... C_m D_m`` (DESIGN §4, CDVFT).

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
        if config is None:
            config = CirculantDiagonalConfig(block_size=block_size, factors=factors, init=init)
        super().__init__(base_layer)
        self.add_adapter(adapter_name, config)

    @classmethod
    def check_config(cls, config, in_features, out_features, name=""):
        super().check_config(config, in_features, out_features, name)
        b = config.block_size
        if b is not None and (in_features % b or out_features % b):
            raise _block_size_error(b, in_features, out_features, _where(name))

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
        flops = ((i // b + o // b) * _fft_flops(b) + 4.0 * i * o / b + i + o
                 + (m - 1) * (2 * (i // b) * _fft_flops(b) + 4.0 * i * i / b + i))
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
    uses :func:`circfft.nn.functional.fourierft_matmul` (DESIGN §6).
    """

    adapter_param_names = ("fourierft_spectrum",)
    config_class = FourierFTConfig

    def __init__(self, base_layer, n_frequency=1000, scaling=150.0, random_loc_seed=777,
                 init_weights=False, *, adapter_name="default", config=None):
        if config is None:
            config = FourierFTConfig(n_frequency=n_frequency, scaling=scaling,
                                     random_loc_seed=random_loc_seed,
                                     init_weights=init_weights)
        super().__init__(base_layer)
        self.add_adapter(adapter_name, config)

    @classmethod
    def check_config(cls, config, in_features, out_features, name=""):
        super().check_config(config, in_features, out_features, name)
        if config.n_frequency > in_features * out_features:
            raise ValueError(f"n_frequency={config.n_frequency} exceeds in_features * "
                             f"out_features = {in_features} * {out_features} = "
                             f"{in_features * out_features}{_where(name)}")

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
        flops = _fft_flops(self.in_features) + 4.0 * n + _fft_flops(self.out_features)
        return {"params": n, "flops_per_token": flops}


#: adapter_type -> layer class (used by :func:`circfft.nn.inject`).
LAYER_CLASSES = {
    CirculantConfig.adapter_type: CirculantAdapter,
    CirculantDiagonalConfig.adapter_type: CirculantDiagonalAdapter,
    FourierFTConfig.adapter_type: FourierFTAdapter,
}
