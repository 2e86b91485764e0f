"""Model-level adapter API: inject adapters into a model, merge, unload, report.

Contract settled here:

- :func:`inject` works **in place** and returns the same model.  Every matched ``nn.Linear`` /
  HF ``Conv1D`` is replaced by the adapter layer of the config's type holding the original
  module as ``base_layer``; a matched layer that is already an adapter layer of the same type
  gets the new adapter added (a different type raises TypeError: one layer holds one adapter
  family).  Every target is checked (type, shape, block size, ``n_frequency``) and every name
  in ``target_modules`` / ``modules_to_save`` is resolved **before** the first module is
  replaced, so a failed call leaves the model exactly as it was.
- A list entry of ``target_modules`` or ``modules_to_save`` that matches no module is an error
  (ValueError listing close names): a typo never silently adapts fewer layers.  A regex must
  match at least one module.  Modules inside an adapter layer (its ``base_layer``) are never
  targets themselves.
- After :func:`inject`, only adapter tensors and the parameters of ``modules_to_save`` (of
  every injected config) require grad.  New adapters are added to the active set of their
  layers (all active adapters are summed); :func:`set_adapter` picks the active ones, and only
  active adapters are trainable.
- The model records its configs in ``model.circfft_adapters`` (adapter name -> config) and the
  original ``requires_grad`` flags of its parameters; :func:`unload` /
  :func:`merge_and_unload` put the original module objects back, restore those flags and drop
  both records.
"""
from __future__ import annotations

import contextlib
import difflib
import re

from torch import nn

from ._layer_base import check_adapter_name
from .config import AdapterConfig
from .layers import LAYER_CLASSES, AdapterLayer, base_layer_shape, is_supported_base

__all__ = ["inject", "merge_and_unload", "unload", "disable_adapters", "set_adapter",
           "trainable_parameters", "adapter_report", "format_report", "adapter_layers"]

_FLAGS_ATTR = "_circfft_requires_grad"


# ---------------------------------------------------------------------------------------------
# Name matching
# ---------------------------------------------------------------------------------------------
def _entry_matches(name: str, entry: str) -> bool:
    return name == entry or name.endswith("." + entry)


def _matches(name: str, spec) -> bool:
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(_entry_matches(name, e) for e in spec)


def _close_names(query: str, names) -> list[str]:
    """Names (or dotted suffixes of them) close to ``query``, best first."""
    pool = set()
    for n in names:
        parts = n.split(".")
        pool.update(".".join(parts[i:]) for i in range(len(parts)))
    return difflib.get_close_matches(query, sorted(pool), n=5, cutoff=0.5)


def adapter_layers(model: nn.Module):
    """``(name, layer)`` for every adapter layer of ``model`` (``""`` for the model itself)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLayer)]


def _visible_modules(model):
    """``(name, module)`` pairs that can be targeted: not the root, not inside an adapter."""
    inside = [n for n, _ in adapter_layers(model)]
    out = []
    for name, module in model.named_modules():
        if not name:
            continue
        if any(name.startswith(a + ".") for a in inside if a) or \
                ("" in inside and name):
            continue
        out.append((name, module))
    return out


def _layer_names(visible):
    return [n for n, m in visible if isinstance(m, AdapterLayer) or is_supported_base(m)]


def _no_match_error(what, entry, visible):
    names = _layer_names(visible)
    close = _close_names(entry, names)
    hint = f"close names: {close}" if close else f"linear layers include: {names[:8]}"
    return ValueError(f"{what} entry {entry!r} matches no module of the model; {hint}")


def _resolve_targets(model, config, adapter_name):
    """Every check of `inject`; returns ``[(name, module), ...]`` and the save-module names."""
    visible = _visible_modules(model)
    tm, ex = config.target_modules, config.exclude_modules
    save = config.modules_to_save or []
    save_names = []
    for entry in save:
        hits = [n for n, _ in visible if _entry_matches(n, entry)]
        if not hits:
            close = _close_names(entry, [n for n, _ in visible])
            raise ValueError(f"modules_to_save entry {entry!r} matches no module of the model; "
                             f"close names: {close}")
        save_names.extend(hits)

    def in_saved(name):
        return any(name == s or name.startswith(s + ".") for s in save_names)

    if tm is None:
        matched = [(n, m) for n, m in visible
                   if (is_supported_base(m) or isinstance(m, AdapterLayer)) and not in_saved(n)]
        if not matched:
            raise ValueError("target_modules=None adapts every nn.Linear / Conv1D, but the "
                             "model has none outside modules_to_save")
    else:
        matched = [(n, m) for n, m in visible if _matches(n, tm)]
        if isinstance(tm, str):
            if not matched:
                raise _no_match_error("target_modules regex", tm, visible)
        else:
            for entry in tm:
                if not any(_entry_matches(n, entry) for n, _ in matched):
                    raise _no_match_error("target_modules", entry, visible)
    targets = [(n, m) for n, m in matched if not _matches(n, ex)]
    if not targets:
        raise ValueError(f"every module matched by target_modules={tm!r} is excluded by "
                         f"exclude_modules={ex!r}")

    layer_cls = LAYER_CLASSES[config.adapter_type]
    for name, module in targets:
        if isinstance(module, AdapterLayer):
            if type(module) is not layer_cls:
                raise TypeError(f"module '{name}' already holds {type(module).__name__} "
                                f"adapters {sorted(module.configs)}; a "
                                f"{type(config).__name__} needs a {layer_cls.__name__} (one "
                                f"layer holds one adapter family)")
            if adapter_name in module.configs:
                raise ValueError(f"module '{name}' already has an adapter named "
                                 f"{adapter_name!r}")
            in_f, out_f = module.in_features, module.out_features
        else:
            in_f, out_f, _ = base_layer_shape(module, name)
        layer_cls.check_config(config, in_f, out_f, name)
    return targets, save_names


# ---------------------------------------------------------------------------------------------
# Injection and removal
# ---------------------------------------------------------------------------------------------
def _set_submodule(model, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _adapter_param_ids(model):
    ids = set()
    for _, layer in adapter_layers(model):
        for attr in layer.adapter_param_names:
            ids.update(id(p) for p in getattr(layer, attr).values())
    return ids


def _apply_trainability(model):
    """Freeze everything but adapter tensors and every config's ``modules_to_save``."""
    adapter_ids = _adapter_param_ids(model)
    for p in model.parameters():
        if id(p) not in adapter_ids:
            p.requires_grad_(False)
    names = set()
    for cfg in getattr(model, "circfft_adapters", {}).values():
        names.update(cfg.modules_to_save or [])
    for name, module in _visible_modules(model):
        if any(_entry_matches(name, e) for e in names):
            for p in module.parameters():
                if id(p) not in adapter_ids:
                    p.requires_grad_(True)


def inject(model: nn.Module, config: AdapterConfig, adapter_name: str = "default") -> nn.Module:
    """Add adapter ``adapter_name`` described by ``config`` to ``model``, in place.

    Parameters
    ----------
    model : nn.Module
        Model to adapt; changed in place.
    config : CirculantConfig, CirculantDiagonalConfig or FourierFTConfig
        What to adapt and how.
    adapter_name : str, optional
        Name of the new adapter (state-dict keys end with it).

    Returns
    -------
    model : nn.Module
        The same object.

    Raises
    ------
    ValueError
        A name in ``target_modules`` / ``modules_to_save`` that matches nothing (close names
        listed), a block size that does not divide a target (valid sizes listed),
        ``n_frequency`` larger than a target's ``in * out``, or ``adapter_name`` already used.
    TypeError
        A matched module of an unsupported type (named, with its type and the supported ones),
        or a config that is not an adapter config.

    Notes
    -----
    Every check runs before the first change: after an error the model is unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, AdapterConfig) or config.adapter_type not in LAYER_CLASSES:
        allowed = [c.config_class.__name__ for c in LAYER_CLASSES.values()]
        raise TypeError(f"config must be one of {allowed}, got {type(config).__name__}")
    check_adapter_name(adapter_name)
    known = getattr(model, "circfft_adapters", {})
    if adapter_name in known:
        raise ValueError(f"the model already has an adapter named {adapter_name!r} "
                         f"(adapters: {sorted(known)})")
    targets, _ = _resolve_targets(model, config, adapter_name)

    # -- no error past this point: change the model --
    if not hasattr(model, _FLAGS_ATTR):
        object.__setattr__(model, _FLAGS_ATTR,
                           [(p, p.requires_grad) for p in model.parameters()])
    layer_cls = LAYER_CLASSES[config.adapter_type]
    for name, module in targets:
        if isinstance(module, AdapterLayer):
            module.add_adapter(adapter_name, config)
        else:
            _set_submodule(model, name, layer_cls(module, config=config,
                                                  adapter_name=adapter_name))
    adapters = dict(known)
    adapters[adapter_name] = config
    object.__setattr__(model, "circfft_adapters", adapters)
    _apply_trainability(model)
    return model


def _remove(model, merge):
    for name, layer in adapter_layers(model):
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        if name:
            _set_submodule(model, name, layer.base_layer)
    root = model.base_layer if isinstance(model, AdapterLayer) else model
    for p, flag in getattr(model, _FLAGS_ATTR, []):
        p.requires_grad_(flag)
    for attr in (_FLAGS_ATTR, "circfft_adapters"):
        if attr in model.__dict__:
            object.__delattr__(model, attr)
    return root


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every layer's active adapters into its weight and put the base modules back.

    Returns the plain model (the same object; the original ``nn.Linear`` / ``Conv1D`` objects,
    with merged weights, are back in place and ``requires_grad`` flags are restored).
    """
    return _remove(model, merge=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove all adapters (unmerging merged ones) and return the plain model."""
    return _remove(model, merge=False)


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Context in which every adapter layer of ``model`` acts as its base layer."""
    with contextlib.ExitStack() as stack:
        for _, layer in adapter_layers(model):
            stack.enter_context(layer.disable_adapters())
        yield model


def set_adapter(model: nn.Module, names) -> None:
    """Make ``names`` (str or list) the active adapters of every layer that holds them.

    Only active adapters stay trainable.  Raises ValueError for a name the model lacks.
    """
    names = [names] if isinstance(names, str) else list(names)
    known = getattr(model, "circfft_adapters", {})
    for n in names:
        if n not in known:
            raise ValueError(f"adapter {n!r} is not in the model; it has {sorted(known)}")
    for _, layer in adapter_layers(model):
        layer.set_adapter([n for n in names if n in layer.configs])


def trainable_parameters(model: nn.Module):
    """``(trainable, total)`` numbers of parameters (shared tensors counted once)."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def adapter_report(model: nn.Module) -> list[dict]:
    """One dict per (adapter layer, adapter): cost of the update next to the base layer's.

    Keys: ``name`` (module path), ``adapter``, ``type`` (adapter type), ``in``, ``out``,
    ``params`` (trainable numbers of the adapter), ``flops_per_token`` (forward flops of the
    update, see :mod:`circfft.nn.layers`), ``base_params`` (``in * out``) and
    ``base_flops_per_token`` (``2 * in * out``), ``active``, ``merged``.
    """
    rows = []
    for name, layer in adapter_layers(model):
        for adapter, cfg in layer.configs.items():
            cost = layer.adapter_cost(adapter)
            rows.append({"name": name, "adapter": adapter, "type": cfg.adapter_type,
                         "in": layer.in_features, "out": layer.out_features,
                         "params": int(cost["params"]),
                         "flops_per_token": float(cost["flops_per_token"]),
                         "base_params": layer.in_features * layer.out_features,
                         "base_flops_per_token": 2.0 * layer.in_features * layer.out_features,
                         "active": adapter in layer.active_adapters,
                         "merged": adapter in layer.merged_adapters})
    return rows


def format_report(report) -> str:
    """Text table of `adapter_report` rows (or of a model's report) with a totals line."""
    rows = adapter_report(report) if isinstance(report, nn.Module) else list(report)
    head = ("name", "adapter", "type", "in", "out", "params", "flops/token", "base params",
            "% params")
    lines = []
    for r in rows:
        pct = 100.0 * r["params"] / r["base_params"] if r["base_params"] else 0.0
        lines.append((r["name"] or "<model>", r["adapter"], r["type"], str(r["in"]),
                      str(r["out"]), f"{r['params']:,}", f"{r['flops_per_token']:,.0f}",
                      f"{r['base_params']:,}", f"{pct:.3f}"))
    tp = sum(r["params"] for r in rows)
    tb = sum(r["base_params"] for r in rows)
    tf = sum(r["flops_per_token"] for r in rows)
    total = ("total", "", "", "", "", f"{tp:,}", f"{tf:,.0f}", f"{tb:,}",
             f"{100.0 * tp / tb if tb else 0.0:.3f}")
    table = [head] + lines + [total]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    left = {0, 1, 2}

    def fmt(row):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule] + [fmt(r) for r in lines] + [rule, fmt(total)])

