"""The shared adapter layer: a frozen base layer plus named adapters, merging, and the two routes.

See :mod:`circfft.nn.layers` for the conventions every adapter follows (orientation,
precision, memory, routes, scaling); the concrete adapters live there.
"""
from __future__ import annotations

import contextlib
import math
import sys
import warnings

import torch
from torch import nn

from .._config import get_config
from .config import AdapterConfig

__all__ = ["AdapterLayer", "SUPPORTED_BASE_TYPES", "base_layer_shape", "is_supported_base",
           "valid_block_sizes", "compute_dtype", "block_size_error", "fft_flops",
           "check_adapter_name", "where"]

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


def block_size_error(b, in_features, out_features, where):
    sizes = valid_block_sizes(in_features, out_features)
    pow2 = [d for d in sizes if d & (d - 1) == 0]
    return ValueError(
        f"block_size={b} does not divide in_features={in_features} and "
        f"out_features={out_features}{where}; valid block sizes: powers of two {pow2}, "
        f"all common divisors {sizes}")


# ---------------------------------------------------------------------------------------------
# Functional helpers
# ---------------------------------------------------------------------------------------------
def where(name: str) -> str:
    """`` of layer '<name>'`` for messages (empty for an unnamed layer)."""
    return f" of layer '{name}'" if name else ""


def check_adapter_name(name, what: str = "adapter_name") -> str:
    """An adapter name is a non-empty str without '.' (it is a key of the state dict)."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__} {name!r}")
    if not name or "." in name:
        raise ValueError(f"{what} must be a non-empty str without '.', got {name!r}")
    return name


def compute_dtype(dtype) -> torch.dtype:
    """Adapter arithmetic for data of ``dtype``: float64 stays float64, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fft_flops(n: int) -> float:
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

    def __init__(self, base_layer: nn.Module, adapter_name=None, config=None):
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
        if config is not None:
            self.add_adapter(adapter_name, config)

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
        b = getattr(config, "block_size", None)         # the circulant adapters' blocks
        if b is not None and (in_features % b or out_features % b):
            raise block_size_error(b, in_features, out_features, where(name))

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
        check_adapter_name(name, "adapter name")
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
