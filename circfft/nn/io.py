"""Save and load adapters: circfft's own format and stock PEFT's C3A / FourierFT directories.

Formats
-------
``format="circfft"`` (every adapter type, incl. circulant-diagonal): a directory with
``circfft_adapter.json`` (format name and version, the adapter config, the adapted modules with
their shapes, the ``modules_to_save`` paths) and ``circfft_adapter.safetensors`` whose keys are
the model's state-dict keys with the adapter name removed: ``<module path>.<tensor name>`` for
adapter tensors (``circ_kernel``, ``cd_left``, ..., ``fourierft_spectrum``) and ``<module
path>.<parameter>`` for the modules in ``modules_to_save``.

``format="peft"``: what stock PEFT's ``save_pretrained`` writes for the equivalent C3A or
FourierFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``, see
:mod:`circfft.nn.peft_format`), loadable with ``peft.PeftModel.from_pretrained``.

Guarantees
----------
- Writes are atomic: files go to a temporary directory next to ``path``, are fsynced, and the
  directory is renamed into place; an existing adapter directory is replaced only once the new
  one is complete, and a failure leaves it untouched (and no temporary directory behind).
- `load_adapter` validates the whole file against the model (config, module names, tensor
  shapes) before changing anything; a bad file raises ValueError and leaves the model as it
  was.  It does not consume random numbers from torch's global generator.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .. import _version
from ._adapter_dirs import (CIRCFFT_CONFIG_NAME, CIRCFFT_WEIGHTS_NAME, FORMAT_NAME,
                            FORMAT_VERSION, AdapterFile, check_present, read_dir,
                            write_dir_atomically, write_json, write_tensors)
from ._layer_base import check_adapter_name
from . import model as _model
from . import peft_format as _pf
from .config import AdapterConfig
from .layers import LAYER_CLASSES, AdapterLayer, base_layer_shape

__all__ = ["save_adapter", "load_adapter", "CIRCFFT_CONFIG_NAME", "CIRCFFT_WEIGHTS_NAME",
           "FORMAT_VERSION"]

# Config fields that do not change the adapter's function (who is targeted, how it started).
_NON_FUNCTIONAL_FIELDS = {"target_modules", "exclude_modules", "modules_to_save",
                          "fan_in_fan_out", "init", "init_weights"}

# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
def _check_common(model, path, adapter_name) -> Path:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    check_adapter_name(adapter_name)
    return Path(path)


def _adapter_config(model, adapter_name) -> AdapterConfig:
    known = getattr(model, "circfft_adapters", {})
    if adapter_name not in known:
        raise ValueError(f"adapter_name={adapter_name!r}: the model has no such adapter "
                         f"(adapters: {sorted(known)})")
    return known[adapter_name]


def _layers_with(model, adapter_name):
    return [(n, m) for n, m in _model.adapter_layers(model) if adapter_name in m.configs]


def _save_module_names(model, entries) -> list[str]:
    """Paths of the modules ``modules_to_save`` entries select (our rule), outermost only."""
    if not entries:
        return []
    hits = [n for n, _ in _model._visible_modules(model)
            if any(n == e or n.endswith("." + e) for e in entries)]
    return [n for n in hits if not any(n.startswith(h + ".") for h in hits)]


def _saved_tensors(model, names) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        for key, t in model.get_submodule(name).state_dict().items():
            out[f"{name}.{key}"] = t
    return out


# ---------------------------------------------------------------------------------------------
# save_adapter
# ---------------------------------------------------------------------------------------------
def save_adapter(model: nn.Module, path, format: str = "circfft", adapter_name: str = "default",
                 *, exact: bool = True) -> Path:
    """Write adapter ``adapter_name`` of ``model`` (and its ``modules_to_save``) to ``path``.

    Parameters
    ----------
    model : nn.Module
        A model prepared with :func:`circfft.nn.inject` (or `load_adapter`).
    path : str or os.PathLike
        Directory to write.  It is created (with its parents); an existing adapter directory is
        replaced atomically, anything else at ``path`` is refused.
    format : {"circfft", "peft"}, optional
        ``"circfft"`` stores any circfft adapter.  ``"peft"`` writes stock PEFT's C3A (from a
        block-circulant adapter) or FourierFT directory.
    adapter_name : str, optional
        Adapter to save.
    exact : bool, optional
        Only for ``format="peft"`` and block-circulant adapters whose scale is not
        ``"fan_in"``: PEFT's C3A always scales by ``1/in_features``, so the kernel is multiplied
        by ``scale * in_features``.  With ``exact=True`` (default) this is allowed only when the
        factor is a power of two (no rounding); ``exact=False`` accepts one rounding per entry.

    Returns
    -------
    path : pathlib.Path
        The directory written.

    Raises
    ------
    ValueError
        Unknown ``format`` or ``adapter_name``; ``format="peft"`` for an adapter PEFT cannot
        represent (circulant-diagonal; C3A on an HF ``Conv1D``; a scale PEFT's C3A cannot
        reproduce exactly with ``exact=True``); ``path`` is a file or a non-adapter directory.
    TypeError
        ``model`` or ``path`` of the wrong type.
    """
    path = _check_common(model, path, adapter_name)
    if format not in ("circfft", "peft"):
        raise ValueError(f"format must be 'circfft' or 'peft', got {format!r}")
    config = _adapter_config(model, adapter_name)
    layers = _layers_with(model, adapter_name)
    if not layers:
        raise ValueError(f"adapter {adapter_name!r} is recorded on the model but no layer "
                         "holds it")
    save_names = _save_module_names(model, config.modules_to_save)
    if format == "circfft":
        files = _circfft_files(config, layers, save_names, model, adapter_name)
    else:
        files = _peft_files(config, layers, save_names, model, adapter_name, exact)
    (json_name, json_obj), (weights_name, tensors, metadata) = files

    def write(tmp: Path):
        write_tensors(tmp / weights_name, tensors, metadata)
        write_json(tmp / json_name, json_obj)

    write_dir_atomically(path, write)
    return path


def _circfft_files(config, layers, save_names, model, adapter_name):
    tensors, modules = {}, {}
    for name, layer in layers:
        modules[name] = {"layer": type(layer).__name__, "in_features": layer.in_features,
                         "out_features": layer.out_features,
                         "fan_in_fan_out": layer.fan_in_fan_out, "tensors": {}}
        for attr, p in layer.adapter_parameters(adapter_name):
            tensors[f"{name}.{attr}"] = p
            modules[name]["tensors"][attr] = list(p.shape)
    tensors.update(_saved_tensors(model, save_names))
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "circfft_version": _version.__version__, "adapter_name": adapter_name,
            "adapter_type": config.adapter_type, "config": config.to_dict(),
            "modules": modules, "modules_to_save": save_names}
    return ((CIRCFFT_CONFIG_NAME, meta),
            (CIRCFFT_WEIGHTS_NAME, tensors, {"format": "pt", "circfft_format": FORMAT_NAME}))


def _peft_kernel(path, layer, name, config, exact):
    """C3A kernel for adapter ``name`` of the layer at ``path`` (see :mod:`.peft_format`)."""
    # the kernel's own dtype (float32, or float64 for float64 models), as PEFT saves it
    w = layer.circ_kernel[name].detach()
    k = _pf.c3a_index_map(w)
    f, is_exact = _pf.c3a_fold_factor(config.scale, layer.in_features, config.block_size)
    if f == 1:
        return k
    if not is_exact and exact:
        raise ValueError(
            f"format='peft': PEFT's C3A always scales by 1/in_features, so this adapter's "
            f"scale={config.scale!r} on layer '{path}' (in_features={layer.in_features}) needs the "
            f"kernel multiplied by {f} = {float(f):g}, which is not a power of two and would "
            "round every entry; use scale='fan_in', save with format='circfft', or pass "
            "exact=False to accept one rounding per entry")
    k0, k = k, k * float(f)
    if exact and not (torch.isfinite(k).all() and torch.equal(k / float(f), k0)):
        raise ValueError(f"format='peft': multiplying the kernel of '{path}' by {f} to fold "
                         f"scale={config.scale!r} into it overflows or underflows {k.dtype}")
    return k


def _peft_files(config, layers, save_names, model, adapter_name, exact):
    peft_type, peft_tensor, attr = _pf.peft_tensor_name(config.adapter_type)
    tensors = {}
    for name, layer in layers:
        if peft_type == "C3A":
            if layer.fan_in_fan_out:
                raise ValueError(f"format='peft': module '{name}' is an HF Conv1D, which "
                                 "PEFT's C3A does not support (only nn.Linear); save with "
                                 "format='circfft'")
            t = _peft_kernel(name, layer, adapter_name, config, exact)
        else:
            t = getattr(layer, attr)[adapter_name]
        tensors[f"{_pf.PEFT_KEY_PREFIX}{name}.{peft_tensor}"] = t
    for key, t in _saved_tensors(model, save_names).items():
        tensors[_pf.PEFT_KEY_PREFIX + key] = t
    plain = [n for n, _ in _model._visible_modules(model)]
    # PEFT selects modules_to_save by a bare suffix test: keep the user's entries only when
    # that selects the same modules, else name them in full.
    mts = config.modules_to_save
    if mts:
        peft_sel = [n for n in plain if _pf.peft_modules_to_save_match(n, mts)]
        peft_sel = [n for n in peft_sel if not any(n.startswith(h + ".") for h in peft_sel)]
        mts = list(mts) if sorted(peft_sel) == sorted(save_names) else sorted(save_names)
    d = _pf.peft_config_dict(config, [n for n, _ in layers], plain,
                             fan_in_fan_out=any(layer.fan_in_fan_out for _, layer in layers),
                             modules_to_save=mts)
    d["auto_mapping"] = {"base_model_class": type(model).__name__,
                         "parent_library": type(model).__module__}
    return ((_pf.PEFT_CONFIG_NAME, d), (_pf.PEFT_WEIGHTS_NAME, tensors, {"format": "pt"}))


# ---------------------------------------------------------------------------------------------
# Validation against the model (no changes)
# ---------------------------------------------------------------------------------------------
def _functional_fields(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in _NON_FUNCTIONAL_FIELDS}


_SHAPE_CACHE: dict = {}


def _expected_shapes(config, in_f, out_f, name) -> dict:
    """Tensor shapes a new adapter of ``config`` gets on an ``out x in`` layer (meta dry run)."""
    layer_cls = LAYER_CLASSES[config.adapter_type]
    key = (json.dumps(_functional_fields(config), sort_keys=True), in_f, out_f)
    if key not in _SHAPE_CACHE:
        try:
            layer_cls.check_config(config, in_f, out_f, name)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the adapter file's config does not fit the model: {exc}") \
                from None
        base = nn.Linear(in_f, out_f, bias=False, device="meta")
        with torch.random.fork_rng(devices=[]):
            layer = layer_cls(base, config=config, adapter_name="probe")
        _SHAPE_CACHE[key] = {a: tuple(p.shape) for a, p in layer.adapter_parameters("probe")}
    return _SHAPE_CACHE[key]


def _check_tensor(where, key, t, expected_shape):
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        dtype = getattr(t, "dtype", type(t).__name__)
        raise ValueError(f"{where}: tensor {key!r} has dtype {dtype}; a floating dtype is "
                         "required")
    if tuple(t.shape) != tuple(expected_shape):
        raise ValueError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, the model "
                         f"expects {tuple(expected_shape)}")


def _plan(model, af: AdapterFile, adapter_name, path) -> tuple[bool, list]:
    """Validate ``af`` against ``model`` without changing it.

    Returns ``(needs_inject, copies)``, ``copies`` a list of ``(module path, ParameterDict
    name, tensor)`` for adapter tensors and ``(None, state-dict key, tensor)`` for the
    ``modules_to_save`` entries (see `_target`).
    """
    where = f"{path} ({af.source})"
    known = getattr(model, "circfft_adapters", {})
    existing = adapter_name in known
    check_present(where, af.adapter, model)
    copies = []
    if existing:
        have = known[adapter_name]
        if type(have) is not type(af.config) or \
                _functional_fields(have) != _functional_fields(af.config):
            raise ValueError(f"{where}: the model's adapter {adapter_name!r} has config "
                             f"{_functional_fields(have)}, the file has "
                             f"{_functional_fields(af.config)}")
        holders = dict(_layers_with(model, adapter_name))
        if sorted(holders) != sorted(af.adapter):
            raise ValueError(f"{where}: the model's adapter {adapter_name!r} is on modules "
                             f"{sorted(holders)[:5]}..., the file's on "
                             f"{sorted(af.adapter)[:5]}...")
        for name, layer in holders.items():
            if adapter_name in layer.merged_adapters:
                raise ValueError(f"adapter {adapter_name!r} is merged into '{name}'; unmerge "
                                 "it before loading new values")
        for name, layer in holders.items():
            params = dict(layer.adapter_parameters(adapter_name))
            _check_module_tensors(where, name, af.adapter[name], params, layer, af)
            copies += [(name, attr, af.adapter[name][attr]) for attr in params]
        save_names = _save_module_names(model, have.modules_to_save)
    else:
        try:
            targets, save_names = _model._resolve_targets(model, af.config, adapter_name)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: the adapter does not fit the model: {exc}") from None
        targets = dict(targets)
        if sorted(targets) != sorted(af.adapter):
            extra = sorted(set(targets) - set(af.adapter))
            lost = sorted(set(af.adapter) - set(targets))
            raise ValueError(f"{where}: the config's target_modules select modules without "
                             f"tensors in the file {extra[:5]} / the file has tensors for "
                             f"modules not selected {lost[:5]}")
        for name, module in targets.items():
            if isinstance(module, AdapterLayer):     # holds other adapters already
                in_f, out_f = module.in_features, module.out_features
            else:
                in_f, out_f, _ = base_layer_shape(module, name)
            shapes = _expected_shapes(af.config, in_f, out_f, name)
            fake = {a: torch.empty(s, device="meta") for a, s in shapes.items()}
            _check_module_tensors(where, name, af.adapter[name], fake, None, af,
                                  dims=(in_f, out_f))
            copies += [(name, attr, af.adapter[name][attr]) for attr in shapes]
        save_names = _save_module_names(model, af.config.modules_to_save)
    copies += _plan_saved(where, model, af, save_names)
    return not existing, copies


def _check_module_tensors(where, name, found, expected, layer, af, dims=None):
    if dims is None:
        dims = (layer.in_features, layer.out_features)
    if name in af.shapes and tuple(af.shapes[name]) != tuple(dims):
        raise ValueError(f"{where}: module '{name}' was saved with (in_features, "
                         f"out_features) = {tuple(af.shapes[name])}, the model's is {dims}")
    lost = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if lost or extra:
        raise ValueError(f"{where}: module '{name}': tensors {lost} missing, {extra} "
                         "unexpected in the adapter file")
    for attr, p in expected.items():
        _check_tensor(where, f"{name}.{attr}", found[attr], p.shape)


def _plan_saved(where, model, af, save_names):
    if sorted(save_names) != sorted(af.saved_names):
        raise ValueError(f"{where}: modules_to_save of the file {sorted(af.saved_names)} "
                         f"select {sorted(save_names)} in this model")
    expected = _saved_tensors(model, save_names)
    lost = sorted(set(expected) - set(af.saved))
    extra = sorted(set(af.saved) - set(expected))
    if lost or extra:
        raise ValueError(f"{where}: modules_to_save tensors {lost[:5]} missing, {extra[:5]} "
                         "unexpected in the adapter file")
    for key, t in expected.items():
        _check_tensor(where, key, af.saved[key], t.shape)
    return [(None, key, af.saved[key]) for key in expected]


# ---------------------------------------------------------------------------------------------
# Applying (with undo)
# ---------------------------------------------------------------------------------------------
class _Undo:
    """Snapshot of everything `load_adapter` may change, to restore it on failure."""

    def __init__(self, model, copies, adapter_name):
        self.model, self.adapter_name = model, adapter_name
        self.attrs = {k: model.__dict__[k] for k in ("circfft_adapters", _model._FLAGS_ATTR)
                      if k in model.__dict__}
        self.children = [(m, dict(m._modules)) for m in model.modules()]
        self.flags = [(p, p.requires_grad) for p in model.parameters()]
        self.layers = [(layer, set(layer.configs), list(layer.active_adapters))
                       for _, layer in _model.adapter_layers(model)]
        # Values overwritten in place: adapter tensors of an existing adapter, saved modules.
        self.values = []
        for module_name, key, _ in copies:
            t = _target(model, module_name, key, adapter_name, must_exist=False)
            if t is not None:
                self.values.append((t, t.detach().clone()))

    @torch.no_grad()
    def restore(self):
        for t, v in self.values:
            t.copy_(v)
        for layer, names, active in self.layers:
            if self.adapter_name in layer.configs and self.adapter_name not in names:
                layer.delete_adapter(self.adapter_name)
            layer.active_adapters = active
        for m, children in self.children:      # puts replaced modules back
            m._modules.clear()
            m._modules.update(children)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        for k in ("circfft_adapters", _model._FLAGS_ATTR):
            if k in self.attrs:
                object.__setattr__(self.model, k, self.attrs[k])
            elif k in self.model.__dict__:
                object.__delattr__(self.model, k)


def _target(model, module_name, key, adapter_name, must_exist=True):
    """The tensor a plan entry writes.

    ``module_name=None``: ``key`` is a saved module's state-dict key (parameter or buffer);
    else ``key`` is the ParameterDict holding adapter ``adapter_name`` on that adapter layer.
    """
    if module_name is None:
        mod_path, _, leaf = key.rpartition(".")
        module = model.get_submodule(mod_path) if mod_path else model
        t = module._parameters.get(leaf)
        return module._buffers.get(leaf) if t is None else t
    layer = model.get_submodule(module_name)
    store = getattr(layer, key, None) if isinstance(layer, AdapterLayer) else None
    if store is None or adapter_name not in store:
        if must_exist:
            raise RuntimeError(f"no adapter tensor {key!r} for {adapter_name!r} on "
                               f"'{module_name}'")
        return None
    return store[adapter_name]


def load_adapter(model: nn.Module, path, adapter_name: str = "default") -> nn.Module:
    """Load an adapter directory (circfft format, or PEFT C3A / FourierFT) into ``model``.

    Parameters
    ----------
    model : nn.Module
        Model to load into, in place.  If it has no adapter ``adapter_name``, the adapter the
        directory describes is injected first (:func:`circfft.nn.inject`); if it has one, its
        config must have the same function (type, block size / scale, frequencies / scaling /
        seed) and the same modules, and only the values are replaced.
    path : str or os.PathLike
        Directory written by `save_adapter` or by PEFT's ``save_pretrained`` (detected by
        ``adapter_config.json``'s ``peft_type``).
    adapter_name : str, optional
        Name the adapter gets in ``model``.

    Returns
    -------
    model : nn.Module
        The same object.

    Raises
    ------
    ValueError
        Missing directory or file, unreadable file, unknown format or ``peft_type``, a PEFT
        feature circfft does not reproduce, a config that does not fit the model (block size,
        ``n_frequency``), a target module the model lacks, a tensor with the wrong shape or
        dtype (named, expected vs found shape), missing or unexpected tensors.  The model is
        left unchanged.
    TypeError
        ``model`` or ``path`` of the wrong type.

    Notes
    -----
    A PEFT C3A kernel ``k`` becomes ``circ_kernel = roll(flip(k, -1), 1, -1)`` with
    ``scale="fan_in"``: an exact reindexing, so PEFT -> circfft -> PEFT is bit-exact.
    """
    path = _check_common(model, path, adapter_name)
    af = read_dir(path, model)
    needs_inject, copies = _plan(model, af, adapter_name, path)

    # -- everything is validated: change the model, undoing all of it on any failure --
    undo = _Undo(model, copies, adapter_name)
    try:
        if needs_inject:
            with torch.random.fork_rng(devices=[]):   # initial values are overwritten anyway
                _model.inject(model, af.config, adapter_name)
        _copy_values(model, copies, adapter_name)
    except BaseException:
        undo.restore()
        raise
    return model


@torch.no_grad()
def _copy_values(model, copies, adapter_name):
    for module_name, key, src in copies:
        dst = _target(model, module_name, key, adapter_name)
        dst.copy_(src.to(dtype=dst.dtype, device=dst.device))
