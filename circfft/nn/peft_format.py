"""Mapping between circfft adapters and stock PEFT's C3A / FourierFT checkpoint format.

A PEFT adapter directory holds ``adapter_config.json`` (the tuner config's fields, with
``peft_type``) and ``adapter_model.safetensors`` whose keys are the wrapped model's state-dict
keys with the adapter name removed, e.g. ``base_model.model.<module path>.c3a_kernel`` (float32, or float64 for a float64 model,
shape ``(d_out/b, d_in/b, b)``), ``base_model.model.<module path>.fourierft_spectrum``
(the same dtype, ``(n_frequency,)``) and, for ``modules_to_save``, ``base_model.model.<module
path>.<parameter>``.  This module only knows that format; reading, validating and writing
directories is :mod:`circfft.nn.io`'s job.

Kernels.  C3A computes ``y = BlockCircularConvolution(x, k) / d_in``; block ``(i, j)`` of that map
is ``circ(w[i, j])`` with ``w[..., r] = k[..., (-r) mod b]`` (docs/operators.rst, "Kernels from PEFT's C3A").  That index map is its
own inverse, so the same function converts in both directions, and it only moves entries: with
``scale="fan_in"`` (our ``1/in_features``) the round trip is bit-exact.
"""
from __future__ import annotations

from fractions import Fraction

import torch

__all__ = ["PEFT_CONFIG_NAME", "PEFT_WEIGHTS_NAME", "PEFT_KEY_PREFIX", "PEFT_TYPES",
           "PEFT_BUILD_VERSION", "c3a_index_map", "c3a_fold_factor", "peft_tensor_name",
           "peft_modules_to_save_match", "peft_target_modules", "peft_config_dict",
           "check_peft_config", "split_peft_key"]

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
# PeftModel wraps the user's model as ``base_model.model``; saved keys keep that prefix.
PEFT_KEY_PREFIX = "base_model.model."
# The PEFT release whose files this module writes and was tested against.
PEFT_BUILD_VERSION = "0.21.2"

# peft_type -> (our adapter_type, the PEFT tensor name, our ParameterDict name).
PEFT_TYPES = {
    "C3A": ("circulant", "c3a_kernel", "circ_kernel"),
    "FOURIERFT": ("fourierft", "fourierft_spectrum", "fourierft_spectrum"),
}
_PEFT_TYPE_OF = {adapter_type: peft_type for peft_type, (adapter_type, _, _) in PEFT_TYPES.items()}


def peft_tensor_name(adapter_type: str) -> tuple[str, str, str]:
    """``(peft_type, PEFT tensor name, our ParameterDict name)`` for one of our adapter types.

    Raises
    ------
    ValueError
        If PEFT has no counterpart of ``adapter_type`` (e.g. ``"circulant_diagonal"``).
    """
    if adapter_type not in _PEFT_TYPE_OF:
        raise ValueError(
            f"adapter type {adapter_type!r} has no stock-PEFT counterpart (PEFT knows C3A = "
            f"'circulant' and FourierFT = 'fourierft'); save it with format='circfft'")
    peft_type = _PEFT_TYPE_OF[adapter_type]
    return (peft_type,) + PEFT_TYPES[peft_type][1:]


def c3a_index_map(k: torch.Tensor) -> torch.Tensor:
    """Reindex a kernel between C3A's convention and ours: ``out[..., r] = k[..., (-r) mod b]``.

    The map is an involution (applying it twice gives ``k`` back) and moves values without
    arithmetic, so it is exact.  It equals ``roll(flip(k, -1), 1, -1)`` (docs/operators.rst, "Kernels from PEFT's C3A", without the
    ``1/d_in``, which our ``scale="fan_in"`` supplies).
    """
    return torch.roll(torch.flip(k, (-1,)), 1, -1)


def _is_power_of_two(f: Fraction) -> bool:
    num, den = f.numerator, f.denominator
    return f > 0 and num & (num - 1) == 0 and den & (den - 1) == 0


def c3a_fold_factor(scale, in_features: int, block_size: int) -> tuple[Fraction, bool]:
    """Factor ``f`` with ``scale * C(w) = C(f * w) / in_features``, and whether ``f * w`` is exact.

    PEFT's C3A always divides by ``in_features``; a circfft adapter with another scale is written
    for PEFT by multiplying its kernel by ``f = scale * in_features``.  Multiplying float32 values
    by ``f`` loses nothing exactly when ``f`` is a power of two (barring overflow/underflow, which
    the caller checks).  ``"fan_in"`` gives ``f = 1``; ``"block"`` gives ``in_features / b``.
    """
    if scale == "fan_in":
        f = Fraction(1)
    elif scale == "block":
        f = Fraction(in_features, block_size)
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        f = Fraction(scale) * in_features
    else:
        raise ValueError(f"scale must be 'fan_in', 'block' or a number, got {scale!r}")
    return f, _is_power_of_two(f)


def peft_modules_to_save_match(name: str, entries) -> bool:
    """PEFT's ``modules_to_save`` rule: a bare suffix test (no '.' boundary, unlike targets)."""
    return any(name.endswith(entry) for entry in entries)


def _list_target_match(name: str, entries) -> bool:
    return name in entries or any(name.endswith("." + entry) for entry in entries)


def peft_target_modules(config, adapted: list[str], plain_names: list[str]):
    """``target_modules`` to write so that stock PEFT adapts exactly the modules in ``adapted``.

    The user's own list is kept when PEFT's matching rule (same as ours) selects exactly
    ``adapted`` among the model's module names ``plain_names`` (names as PEFT sees them, without
    our adapter layers' internals) and there is no ``exclude_modules``; otherwise the explicit
    list of module paths is written, which PEFT matches exactly.
    """
    targets = config.target_modules
    if isinstance(targets, (list, tuple, set)) and not config.exclude_modules:
        chosen = sorted(n for n in plain_names if _list_target_match(n, targets))
        if chosen == sorted(adapted):
            return sorted(targets)
    return sorted(adapted)


def peft_config_dict(config, adapted: list[str], plain_names: list[str], *,
                     fan_in_fan_out: bool, modules_to_save) -> dict:
    """The ``adapter_config.json`` content stock PEFT writes for the equivalent adapter.

    Parameters
    ----------
    config : CirculantConfig or FourierFTConfig
        Our adapter's configuration.
    adapted : list of str
        Paths of the adapted modules.
    plain_names : list of str
        The model's module names as PEFT would see them (see `peft_target_modules`).
    fan_in_fan_out : bool
        Whether a target is an HF ``Conv1D`` (PEFT records it for FourierFT).
    modules_to_save : list of str or None
        Entries for PEFT's ``modules_to_save``.
    """
    peft_type, _, _ = peft_tensor_name(config.adapter_type)
    # Fields every PeftConfig writes, in the values PEFT uses for a model built from a config.
    common = {
        "auto_mapping": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "inference_mode": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "peft_type": peft_type,
        "peft_version": PEFT_BUILD_VERSION,
        "revision": None,
        "target_modules": peft_target_modules(config, adapted, plain_names),
        "task_type": None,
    }
    if peft_type == "C3A":
        specific = {
            "block_size": int(config.block_size),
            "block_size_pattern": {},
            # True means "zeros" in C3A; it only matters for a fresh (untrained) PEFT adapter.
            "init_weights": True,
        }
    else:
        specific = {
            "exclude_modules": None,
            "fan_in_fan_out": bool(fan_in_fan_out),
            "init_weights": bool(getattr(config, "init_weights", False)),
            "n_frequency": int(config.n_frequency),
            "n_frequency_pattern": {},
            "random_loc_seed": int(config.random_loc_seed),
            "scaling": float(config.scaling),
        }
    return dict(sorted({**common, **specific}.items()))


def check_peft_config(d: dict, path) -> tuple[str, str, str]:
    """Validate a PEFT ``adapter_config.json`` dict we can read; return `PEFT_TYPES`' entry.

    Raises
    ------
    ValueError
        Unknown or unsupported ``peft_type``, or a PEFT feature circfft does not reproduce
        (trainable biases, per-module block sizes / frequency counts, prompt-learning fields).
    """
    peft_type = d.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise ValueError(
            f"{path}: peft_type {peft_type!r} is not supported; circfft reads "
            f"{sorted(PEFT_TYPES)} (and its own format)")
    bias = d.get("bias", "none")
    if bias not in (None, "none"):
        raise ValueError(f"{path}: bias={bias!r} (trainable biases) is not supported; only 'none'")
    pattern_field = "block_size_pattern" if peft_type == "C3A" else "n_frequency_pattern"
    if d.get(pattern_field):
        raise ValueError(
            f"{path}: {pattern_field}={d[pattern_field]!r} (per-module sizes) is not supported; "
            "circfft adapters use one size per adapter")
    required = ("block_size",) if peft_type == "C3A" else ("n_frequency", "scaling",
                                                           "random_loc_seed")
    for field in required:
        if not isinstance(d.get(field), (int, float)) or isinstance(d.get(field), bool):
            raise ValueError(f"{path}: field {field!r} must be a number, got {d.get(field)!r}")
    return PEFT_TYPES[peft_type]


def split_peft_key(key: str, path) -> str:
    """Strip PEFT's ``base_model.model.`` prefix from a tensor key (ValueError if absent)."""
    if not key.startswith(PEFT_KEY_PREFIX):
        raise ValueError(f"{path}: tensor {key!r} does not start with {PEFT_KEY_PREFIX!r}")
    return key[len(PEFT_KEY_PREFIX):]
