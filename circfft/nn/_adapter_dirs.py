"""Adapter directories on disk: the file names, atomic writes, and reading either format.

A directory in circfft's format or stock PEFT's is read into an :class:`AdapterFile`, a neutral
description (config, adapter tensors per module, saved-module tensors) that
:mod:`circfft.nn.io` validates against a model before changing anything.  Writes go to a
temporary directory next to the target, are fsynced and renamed into place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path


from . import model as _model
from . import peft_format as _pf
from .config import AdapterConfig, CirculantConfig, FourierFTConfig
from .layers import LAYER_CLASSES, AdapterLayer, is_supported_base

__all__ = ["CIRCFFT_CONFIG_NAME", "CIRCFFT_WEIGHTS_NAME", "FORMAT_VERSION", "AdapterFile",
           "FORMAT_NAME", "read_dir", "write_dir_atomically", "write_json", "write_tensors",
           "safetensors", "check_present"]

CIRCFFT_CONFIG_NAME = "circfft_adapter.json"
CIRCFFT_WEIGHTS_NAME = "circfft_adapter.safetensors"
#: Version of the circfft directory format; bumped on incompatible changes.
FORMAT_VERSION = 1
FORMAT_NAME = "circfft-adapter"
# Files an adapter directory may hold; a directory with anything else is never replaced.
_KNOWN_FILES = {CIRCFFT_CONFIG_NAME, CIRCFFT_WEIGHTS_NAME, _pf.PEFT_CONFIG_NAME,
                _pf.PEFT_WEIGHTS_NAME, "adapter_model.bin", "README.md"}


def safetensors():
    try:
        import safetensors.torch as st
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("saving and loading adapters needs safetensors: "
                          "pip install 'circfft[peft]'") from exc
    return st


# ---------------------------------------------------------------------------------------------
# Atomic directory writes
# ---------------------------------------------------------------------------------------------
def _fsync_path(p: Path, directory=False):
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(p, flags)
    except OSError:  # pragma: no cover - e.g. directories cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - fsync on a directory unsupported there
        pass
    finally:
        os.close(fd)


def _check_replaceable(path: Path):
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"path {str(path)!r} exists and is not a directory; refusing to "
                         "replace it")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in _KNOWN_FILES)
    if foreign:
        raise ValueError(f"path {str(path)!r} exists and holds files that are not part of an "
                         f"adapter directory ({foreign[:5]}); refusing to replace it")


def write_dir_atomically(path: Path, write):
    """Run ``write(tmp_dir)``, fsync its files, then move ``tmp_dir`` to ``path``.

    An existing directory at ``path`` is moved aside only after the new one is complete, then
    deleted; if the final rename fails, it is moved back.  Nothing is left behind on failure.
    """
    _check_replaceable(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    old = None
    try:
        write(tmp)
        for f in tmp.iterdir():
            _fsync_path(f)
        _fsync_path(tmp, directory=True)
        if path.exists():
            # rename(2) cannot replace a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            os.replace(path, old / "dir")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "dir", path)
                raise
        else:
            os.replace(tmp, path)
        _fsync_path(parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not (old / "dir").exists():
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(p: Path, obj):
    with open(p, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")


def write_tensors(p: Path, tensors: dict, metadata: dict):
    # safetensors wants contiguous CPU tensors that share no memory.
    st = safetensors()
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    st.save_file(cpu, str(p), metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Reading a directory into a neutral description
# ---------------------------------------------------------------------------------------------
class AdapterFile:
    """What a directory describes: a config, adapter tensors per module, saved-module tensors."""

    def __init__(self, source, config, adapter, saved, saved_names, shapes=None):
        self.source = source                # "circfft" or "peft:<TYPE>" (for messages)
        self.config = config                # AdapterConfig
        self.adapter = adapter              # {module path: {our tensor name: Tensor}}
        self.saved = saved                  # {"<module path>.<key>": Tensor}
        self.saved_names = saved_names      # module paths of modules_to_save
        self.shapes = shapes or {}          # {module path: (in, out)} when the file says


def _read_json(p: Path) -> dict:
    try:
        with open(p, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # (a deeply nested document exhausts the parser's recursion)
        raise ValueError(f"cannot read {p}: {type(exc).__name__}: {exc}"[:500]) from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a JSON object, got {type(d).__name__}")
    return d


def _read_tensors(p: Path) -> dict:
    if not p.is_file():
        raise ValueError(f"missing adapter weights file {p}")
    st = safetensors()
    try:
        return st.load_file(str(p), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"cannot read adapter weights {p}: {exc}") from None


def read_dir(path: Path, model) -> AdapterFile:
    if not path.is_dir():
        raise ValueError(f"adapter directory {str(path)!r} does not exist or is not a "
                         "directory")
    if (path / CIRCFFT_CONFIG_NAME).is_file():
        return _read_circfft(path)
    if (path / _pf.PEFT_CONFIG_NAME).is_file():
        return _read_peft(path, model)
    raise ValueError(f"{str(path)!r} is not an adapter directory: it has neither "
                     f"{CIRCFFT_CONFIG_NAME} nor {_pf.PEFT_CONFIG_NAME}")


def _read_circfft(path: Path) -> AdapterFile:
    p = path / CIRCFFT_CONFIG_NAME
    meta = _read_json(p)
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{p}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if (isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION
            or version < 1):
        raise ValueError(f"{p}: format_version {version!r} is not supported (this circfft "
                         f"reads versions 1..{FORMAT_VERSION})")
    try:
        config = AdapterConfig.from_dict(meta.get("config"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{p}: bad adapter config: {exc}") from None
    modules, save_names = meta.get("modules"), meta.get("modules_to_save") or []
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"{p}: 'modules' must be a non-empty object of adapted modules")
    tensors = _read_tensors(path / CIRCFFT_WEIGHTS_NAME)
    attrs = LAYER_CLASSES[config.adapter_type].adapter_param_names
    adapter, saved, shapes = {}, {}, {}
    for name, info in modules.items():
        try:
            shapes[name] = (int(info["in_features"]), int(info["out_features"]))
            names = list(info["tensors"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{p}: entry of module '{name}' lacks in_features / "
                             "out_features / tensors") from None
        adapter[name] = {}
        for attr in names:
            key = f"{name}.{attr}"
            if attr not in attrs:
                raise ValueError(f"{p}: tensor {key!r}: {attr!r} is not a tensor of a "
                                 f"{config.adapter_type} adapter ({list(attrs)})")
            if key not in tensors:
                raise ValueError(f"{path / CIRCFFT_WEIGHTS_NAME}: tensor {key!r} is missing")
            adapter[name][attr] = tensors.pop(key)
    for key in list(tensors):
        if any(key.startswith(s + ".") for s in save_names):
            saved[key] = tensors.pop(key)
    if tensors:
        raise ValueError(f"{path / CIRCFFT_WEIGHTS_NAME}: unexpected tensors "
                         f"{sorted(tensors)[:5]} (neither adapter tensors listed in "
                         f"{CIRCFFT_CONFIG_NAME} nor modules_to_save)")
    return AdapterFile("circfft", config, adapter, saved, list(save_names), shapes)


def _read_peft(path: Path, model) -> AdapterFile:
    p = path / _pf.PEFT_CONFIG_NAME
    d = _read_json(p)
    adapter_type, peft_tensor, attr = _pf.check_peft_config(d, p)
    wp = path / _pf.PEFT_WEIGHTS_NAME
    if not wp.is_file() and (path / "adapter_model.bin").is_file():
        raise ValueError(f"{path}: only adapter_model.bin (pickle) found; circfft reads "
                         f"PEFT's safetensors files ({_pf.PEFT_WEIGHTS_NAME}) only")
    tensors = _read_tensors(wp)
    adapter, rest = {}, {}
    suffix = "." + peft_tensor
    for key, t in tensors.items():
        bare = _pf.split_peft_key(key, wp)
        if bare.endswith(suffix):
            # keep the file's precision (float64 stays float64); the copy into the model
            # converts to its parameters' dtype
            if adapter_type == "circulant" and t.ndim == 3:
                t = _pf.c3a_index_map(t)
            adapter[bare[: -len(suffix)]] = {attr: t}
        else:
            rest[bare] = t
    if not adapter:
        raise ValueError(f"{wp}: no {peft_tensor!r} tensors for peft_type "
                         f"{d['peft_type']!r}")
    # modules_to_save: the modules PEFT's bare-suffix rule selects in this model.
    entries = d.get("modules_to_save") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(f"{p}: modules_to_save must be a list of module names, got "
                         f"{entries!r}")
    plain = [n for n, _ in _model._visible_modules(model)]
    save_names = [n for n in plain if _pf.peft_modules_to_save_match(n, entries)]
    save_names = [n for n in save_names if not any(n.startswith(h + ".") for h in save_names)]
    for key in rest:
        if not any(key.startswith(s + ".") for s in save_names):
            raise ValueError(f"{wp}: unexpected tensor {_pf.PEFT_KEY_PREFIX + key!r} (not a "
                             f"{peft_tensor!r} tensor and not in modules_to_save="
                             f"{entries!r} of this model)")
    check_present(wp, adapter, model)
    tm, ex = _peft_targets(d, sorted(adapter), model, wp)
    common = {"target_modules": tm, "exclude_modules": ex,
              "modules_to_save": sorted(save_names) or None}
    try:
        if adapter_type == "circulant":
            config = CirculantConfig(block_size=d["block_size"], scale="fan_in", init="zeros",
                                     **common)
        else:
            config = FourierFTConfig(n_frequency=d["n_frequency"], scaling=d["scaling"],
                                     random_loc_seed=d["random_loc_seed"],
                                     init_weights=bool(d.get("init_weights", False)), **common)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{p}: bad {d['peft_type']} config: {exc}") from None
    return AdapterFile(f"peft:{d['peft_type']}", config, adapter, rest, save_names)


def _peft_targets(d, adapted, model, where):
    """``(target_modules, exclude_modules)`` for our config of a PEFT directory.

    PEFT's own ``target_modules`` / ``exclude_modules`` are kept when they can be evaluated
    here (list or regex, without ``layers_to_transform`` / ``layers_pattern`` / "all-linear")
    and must then select exactly the modules the file has tensors for (else the file is
    inconsistent: ValueError).  Otherwise the explicit list of the file's modules is used.
    """
    tm, ex = d.get("target_modules"), d.get("exclude_modules") or None
    for field, value in (("target_modules", tm), ("exclude_modules", ex)):
        if not (value is None or isinstance(value, str) or (
                isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))):
            raise ValueError(f"{where}: field {field!r} must be a module-name list or a regex "
                             f"string, got {value!r}")
    if not tm or tm == "all-linear" or d.get("layers_to_transform") is not None \
            or d.get("layers_pattern"):
        return list(adapted), None
    tm = sorted(tm) if isinstance(tm, (list, tuple)) else tm
    ex = sorted(ex) if isinstance(ex, (list, tuple)) else ex
    try:
        chosen = sorted(n for n, m in _model._visible_modules(model)
                        if (isinstance(m, AdapterLayer) or is_supported_base(m))
                        and _model._matches(n, tm) and not _model._matches(n, ex))
    except re.error:      # a regex Python's re rejects: name the modules instead
        return list(adapted), None
    if chosen != list(adapted):
        extra = sorted(set(chosen) - set(adapted))
        lost = sorted(set(adapted) - set(chosen))
        raise ValueError(f"{where}: target_modules={tm!r} select modules without tensors in "
                         f"the file {extra[:5]} / the file has tensors for modules they do not "
                         f"select {lost[:5]}")
    return tm, ex


def check_present(where, adapter, model):
    visible = dict(_model._visible_modules(model))
    missing = sorted(n for n in adapter if n not in visible)
    if missing:
        raise ValueError(f"{where}: target module(s) {missing[:5]} of the adapter file are "
                         "absent from the model")
