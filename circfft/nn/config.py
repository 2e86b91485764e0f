"""Configuration dataclasses for the circfft adapters (PEFT's ``*Config`` counterpart).

An adapter config says *which* modules of a model get an adapter (``target_modules``,
``exclude_modules``), which other modules stay trainable (``modules_to_save``) and the
adapter's own hyper-parameters.  The configs hold no tensors and know nothing about a model;
:func:`circfft.nn.inject` applies them.

Module matching (same rules as PEFT):

- a **list** of names: a module matches if its full dotted name equals an entry or ends with
  ``"." + entry`` (``"query"`` matches ``encoder.layer.0.attention.self.query``);
- a **str**: a regular expression that must match the full dotted name (``re.fullmatch``);
- ``target_modules=None``: every ``nn.Linear`` / HF ``Conv1D`` of the model (not inside
  ``modules_to_save``).

Configs serialise to plain dicts with `to_dict` (the key ``"adapter_type"`` names the class)
and come back with ``AdapterConfig.from_dict``.  Values are checked when the config is made;
checks that need a layer's shape (``block_size`` dividing it, ``n_frequency <= in*out``) are
done by :func:`circfft.nn.inject` for every target before any module is replaced.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["AdapterConfig", "CirculantConfig", "CirculantDiagonalConfig", "FourierFTConfig",
           "CIRCULANT_INITS", "CIRCULANT_DIAGONAL_INITS", "SCALE_NAMES"]

#: Named values of ``CirculantConfig.scale`` (a positive float is also accepted).
SCALE_NAMES = ("fan_in", "block")
#: Initialisations of the block-circulant kernel (see `CirculantConfig`).
CIRCULANT_INITS = ("zeros", "normal", "xavier_uniform", "kaiming_uniform")
#: Initialisations of the circulant-diagonal adapter (see `CirculantDiagonalConfig`).
CIRCULANT_DIAGONAL_INITS = ("zeros", "normal")

_REGISTRY: dict[str, type] = {}


def _check_names(value, name, allow_none=True):
    """``value`` must be None, a str (regex, compiled here to fail early) or a list of str."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a list of module names or a regex string, got None")
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{name}={value!r} is not a valid regular expression: {exc}") \
                from None
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        bad = [v for v in items if not isinstance(v, str) or not v]
        if bad:
            raise TypeError(f"{name} must hold non-empty str module names, got {bad!r}")
        return items
    raise TypeError(f"{name} must be None, a regex str or a list of str, "
                    f"got {type(value).__name__}")


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not known; expected one of {choices}")


def _positive_int(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} "
                        f"({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value}")
    return int(value)


@dataclass
class AdapterConfig:
    """Fields shared by every circfft adapter config.

    Parameters
    ----------
    target_modules : list of str, str or None, optional
        Modules to adapt: a list of names (exact or dotted-suffix match), a regex matched
        against the full name with ``re.fullmatch``, or None for every ``nn.Linear`` / HF
        ``Conv1D``.
    exclude_modules : list of str, str or None, optional
        Modules never adapted, same matching rules.
    modules_to_save : list of str or None, optional
        Extra modules (e.g. a classifier head) made trainable and saved whole with the adapter;
        matched by the list rules.
    fan_in_fan_out : bool, optional
        The target stores its weight as ``(in, out)`` (HF ``Conv1D``).  The layers set this
        from the module type themselves (True for ``Conv1D``, False for ``nn.Linear``), so the
        value here only documents the intent, as in PEFT.

    Notes
    -----
    Subclasses set the class attribute ``adapter_type``; `to_dict` stores it and `from_dict`
    dispatches on it.
    """

    adapter_type: ClassVar[str] = ""

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    fan_in_fan_out: bool = False

    def __post_init__(self):
        self.target_modules = _check_names(self.target_modules, "target_modules")
        self.exclude_modules = _check_names(self.exclude_modules, "exclude_modules")
        mts = self.modules_to_save
        if isinstance(mts, str):
            raise TypeError("modules_to_save must be a list of module names, not a str "
                            f"(got {mts!r}; write [{mts!r}])")
        self.modules_to_save = _check_names(mts, "modules_to_save")
        if not isinstance(self.fan_in_fan_out, bool):
            raise TypeError(f"fan_in_fan_out must be a bool, got {self.fan_in_fan_out!r}")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.adapter_type:
            _REGISTRY[cls.adapter_type] = cls

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable), with ``"adapter_type"`` first."""
        d = {"adapter_type": self.adapter_type}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, (list, tuple)) else v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        """Rebuild a config from `to_dict` output, choosing the class by ``"adapter_type"``.

        Raises
        ------
        ValueError
            Missing or unknown ``adapter_type`` (the known ones are listed), a type that does
            not fit ``cls``, or keys the class does not have.
        """
        if not isinstance(d, dict):
            raise TypeError(f"d must be a dict, got {type(d).__name__}")
        kind = d.get("adapter_type", cls.adapter_type or None)
        if kind not in _REGISTRY:
            raise ValueError(f"adapter_type={kind!r} is not known; expected one of "
                             f"{sorted(_REGISTRY)}")
        target = _REGISTRY[kind]
        if not issubclass(target, cls):
            raise ValueError(f"adapter_type={kind!r} is a {target.__name__}, not a "
                             f"{cls.__name__}")
        names = {f.name for f in dataclasses.fields(target)}
        extra = sorted(set(d) - names - {"adapter_type"})
        if extra:
            raise ValueError(f"unknown keys for {target.__name__}: {extra}; allowed: "
                             f"{sorted(names)}")
        return target(**{k: v for k, v in d.items() if k != "adapter_type"})


@dataclass
class CirculantConfig(AdapterConfig):
    """Block-circulant adapter: ``dW = scale * C(w)`` (docs/operators.rst and docs/finetuning.rst).

    Parameters
    ----------
    block_size : int, optional
        Block size ``b``; must divide both dimensions of every target.  Parameters per layer:
        ``in * out / b``.
    scale : {"fan_in", "block"} or float, optional
        Output scale of the update.  ``"fan_in"``: ``1 / in_features``, PEFT C3A's convention
        (with ``w = roll(flip(k, -1), 1, -1)`` a C3A kernel ``k`` gives exactly C3A's layer,
        docs/operators.rst, "Kernels from PEFT's C3A").  ``"block"``: ``1 / b``, which under Adam is the same as dividing the
        learning rate by ``b`` (each circulant entry touches ``b`` outputs).  A positive float
        is used as is.
    init : {"zeros", "normal", "xavier_uniform", "kaiming_uniform"}, optional
        ``"zeros"`` starts at ``dW = 0`` (the layer is the base layer), yet the kernel's
        gradient is not zero: it is the block-wise circular correlation of ``x`` and the output
        gradient, independent of the kernel.  The others draw the kernel as PEFT C3A does
        (``"normal"``: standard normal, C3A's "gaussian"; ``"xavier_uniform"``: bound
        ``sqrt(6 / (in + out))``; ``"kaiming_uniform"``: bound ``sqrt(1 / in)``).
    """

    adapter_type: ClassVar[str] = "circulant"

    block_size: int = 64
    scale: str | float = "fan_in"
    init: str = "zeros"

    def __post_init__(self):
        super().__post_init__()
        self.block_size = _positive_int(self.block_size, "block_size")
        s = self.scale
        if isinstance(s, str):
            if s not in SCALE_NAMES:
                raise ValueError(f"scale={s!r} is not known; expected one of {SCALE_NAMES} "
                                 "or a positive float")
        elif isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise TypeError(f"scale must be one of {SCALE_NAMES} or a positive float, "
                            f"got {s!r}")
        elif not (float(s) > 0.0 and float(s) < float("inf")):
            raise ValueError(f"scale must be a positive finite float, got {s!r}")
        else:
            self.scale = float(s)
        _check_choice(self.init, "init", CIRCULANT_INITS)


@dataclass
class CirculantDiagonalConfig(AdapterConfig):
    """Circulant-diagonal adapter: ``dW = D_0 C_1 D_1 C_2 ... C_m D_m`` (``docs/operators.rst``, "Circulant-diagonal products").

    Parameters
    ----------
    block_size : int or None, optional
        Block size of every circulant factor; None picks, per layer, the largest power of two
        dividing both dimensions.
    factors : int, optional
        Number ``m`` of circulant factors.  ``m = 1`` is ``diag(left) C(kernel) diag(right)``.
        For ``m > 1`` the factors applied to ``x`` first are square ``in x in`` block-circulant
        matrices and the last one (``C_1``) is ``out x in``, with a diagonal between each pair:
        parameters ``out + m*in + (m-1)*in*in/b + out*in/b`` (``3d`` for ``m = 1``, square
        ``d x d`` and ``b = d``; ``(2m+1) d`` in general for ``b = d``).
    init : {"zeros", "normal"}, optional
        ``"zeros"``: the output-side diagonal ``D_0`` is zero, the other diagonals are ones and
        the kernels are uniform in ``+-1/sqrt(in)`` (so ``dW = 0`` and ``D_0``'s gradient is
        not zero).  ``"normal"``: ``D_0`` is also ones (``dW != 0``), for tests and ablations.
    """

    adapter_type: ClassVar[str] = "circulant_diagonal"

    block_size: int | None = None
    factors: int = 1
    init: str = "zeros"

    def __post_init__(self):
        super().__post_init__()
        self.block_size = _positive_int(self.block_size, "block_size", allow_none=True)
        self.factors = _positive_int(self.factors, "factors")
        _check_choice(self.init, "init", CIRCULANT_DIAGONAL_INITS)


@dataclass
class FourierFTConfig(AdapterConfig):
    """FourierFT adapter with the same numerics as PEFT's FourierFTConfig (docs/finetuning.rst, "The adapters").

    Parameters
    ----------
    n_frequency : int, optional
        Number of trainable spectral entries per layer (at most ``in * out``).
    scaling : float, optional
        ``dW = scaling * Re(ifft2(F))``.
    random_loc_seed : int, optional
        Seed of the entry positions: ``torch.randperm(out*in, generator=torch.Generator()
        .manual_seed(seed))[:n_frequency]``, rows ``idx // in``, columns ``idx % in``, on the
        ``(out, in)`` grid of the linear map for ``nn.Linear`` and ``Conv1D`` alike (as PEFT).
    init_weights : bool, optional
        False (PEFT's default): the spectrum is ``torch.randn(n_frequency)`` from torch's
        global generator; True: zeros (the layer starts as the base layer).
    """

    adapter_type: ClassVar[str] = "fourierft"

    n_frequency: int = 1000
    scaling: float = 150.0
    random_loc_seed: int = 777
    init_weights: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.n_frequency = _positive_int(self.n_frequency, "n_frequency")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, numbers.Real):
            raise TypeError(f"scaling must be a float, got {self.scaling!r}")
        if not math.isfinite(float(self.scaling)):
            raise ValueError(f"scaling must be a finite float, got {self.scaling!r}")
        self.scaling = float(self.scaling)
        if isinstance(self.random_loc_seed, bool) or \
                not isinstance(self.random_loc_seed, numbers.Integral):
            raise TypeError(f"random_loc_seed must be an int, got {self.random_loc_seed!r}")
        if not isinstance(self.init_weights, bool):
            raise TypeError(f"init_weights must be a bool, got {self.init_weights!r}")

