"""Adapter save/load (circfft.nn.io): round trips, stock-PEFT interop, atomic writes, bad files.

Models are tiny ``transformers`` models built here from a config with a fixed seed (nothing is
downloaded); building the same model twice with the same seed gives the same base weights,
which is how PEFT's ``from_pretrained`` gets its base model.  All models run in eval mode (no
dropout) so outputs can be compared.

Oracles: stock PEFT (its C3A / FourierFT layers and ``save_pretrained`` / ``from_pretrained``),
and the dense float64 matrices of tests/oracles.py.  Tolerances for circfft-vs-PEFT outputs are
FFT rounding bounds (`oracles.tolerance`): a round trip through circfft's own files must be
bit-exact, and so must PEFT C3A -> circfft -> PEFT kernels (the conversion only reindexes).
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from conftest import require

torch = require("torch")
transformers = require("transformers")
peft = require("peft")
st = require("safetensors.torch")

from oracles import (assert_close, block_circulant_matrix_oracle,  # noqa: E402
                     c3a_kernel_to_first_column, fourierft_dense_oracle, tolerance)

import circfft.nn as cnn  # noqa: E402
from circfft.nn import io as cio  # noqa: E402

HIDDEN = 64
PEFT_CFG, PEFT_W = "adapter_config.json", "adapter_model.safetensors"
OUR_CFG, OUR_W = cio.CIRCFFT_CONFIG_NAME, cio.CIRCFFT_WEIGHTS_NAME


# ---------------------------------------------------------------------------------------------
# Tiny models and helpers
# ---------------------------------------------------------------------------------------------
def _bert(layers=2, head=False, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=2 * HIDDEN,
                                  vocab_size=100, num_labels=3)
    cls = transformers.BertForSequenceClassification if head else transformers.BertModel
    return cls(cfg).eval()


def _gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=2, vocab_size=100,
                                  n_positions=32, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(cfg).eval()


MODELS = {"bert": _bert, "gpt2": _gpt2, "bert_head": lambda: _bert(head=True)}


def _ids():
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    ids[0, :5] = torch.tensor([0, 1, 2, 3, 99])          # structured tokens too
    return ids


def _out(model, ids=None):
    ids = _ids() if ids is None else ids
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") and out.logits is not None \
        else out.last_hidden_state


def _train_like(model, seed=5):
    """Give every trainable tensor (adapter + modules_to_save) non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))


CONFIGS = {
    "circulant": lambda **kw: cnn.CirculantConfig(block_size=16, init="normal", **kw),
    "circulant_block": lambda **kw: cnn.CirculantConfig(block_size=16, scale="block",
                                                        init="normal", **kw),
    "circulant_float": lambda **kw: cnn.CirculantConfig(block_size=8, scale=0.37,
                                                        init="normal", **kw),
    "circulant_diagonal": lambda **kw: cnn.CirculantDiagonalConfig(block_size=16,
                                                                   init="normal", **kw),
    "circulant_diagonal_m2": lambda **kw: cnn.CirculantDiagonalConfig(factors=2,
                                                                      init="normal", **kw),
    "fourierft": lambda **kw: cnn.FourierFTConfig(n_frequency=60, scaling=30.0,
                                                  random_loc_seed=11, **kw),
}
TARGETS = {"bert": ["query", "value"], "bert_head": ["query", "value"], "gpt2": ["c_attn"]}


def _adapted(kind, model_name="bert", name="default", **kw):
    model = MODELS[model_name]()
    kw.setdefault("target_modules", TARGETS[model_name])
    cnn.inject(model, CONFIGS[kind](**kw), name)
    _train_like(model)
    return model


def _snapshot(model):
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "buffers": sorted(n for n, _ in model.named_buffers()),
            "types": [(n, type(m)) for n, m in model.named_modules()],
            "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
            "adapters": dict(getattr(model, "circfft_adapters", {})),
            "has_adapters": hasattr(model, "circfft_adapters"),
            "active": [(n, list(m.active_adapters)) for n, m in model.named_modules()
                       if isinstance(m, cnn.AdapterLayer)]}


def _assert_unchanged(model, snap):
    now = _snapshot(model)
    assert now["types"] == snap["types"], "module types changed"
    assert now["state"].keys() == snap["state"].keys(), "state_dict keys changed"
    for k, v in snap["state"].items():
        assert torch.equal(now["state"][k], v), f"{k} changed"
    for key in ("buffers", "grad", "adapters", "has_adapters", "active"):
        assert now[key] == snap[key], f"{key} changed"


def _adapter_tensors(model, name="default"):
    out = {}
    for path, layer in cnn.model.adapter_layers(model):
        for attr, p in (layer.adapter_parameters(name) if name in layer.configs else []):
            out[f"{path}.{attr}"] = p.detach().clone()
    return out


def _model_atol(y, n_adapted):
    """Bound for circfft-vs-PEFT model outputs.

    Each adapted layer's update differs by FFT rounding (`tolerance` of a length-HIDDEN
    transform relative to the activations' row norm; LayerNorm keeps activations O(1)); the
    rest of both networks is the same float32 code on the same weights.
    """
    rows = np.linalg.norm(y.detach().double().numpy().reshape(-1, y.shape[-1]), axis=1)
    return n_adapted * tolerance(HIDDEN, np.float32, float(rows.max()))


def _peft_load(base, path):
    """``PeftModel.from_pretrained``, failing on PEFT's missing/unexpected-key warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(base, str(path)).eval()
    bad = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
    assert not bad, bad
    return pm


# ---------------------------------------------------------------------------------------------
# Oracle sanity: the C3A dense oracle agrees with stock PEFT's own dense matrix
# ---------------------------------------------------------------------------------------------
def test_c3a_oracle_matches_stock_peft():
    from peft.tuners.c3a.utils import get_circulant_fast

    k = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(1))
    k[0, 0] = torch.eye(8)[1]                   # an impulse block
    dense_peft = get_circulant_fast(k).double().numpy()
    dense_oracle = block_circulant_matrix_oracle(c3a_kernel_to_first_column(k.numpy()))
    assert_close(dense_peft, dense_oracle,
                 3 * tolerance(8, np.float32, float(np.abs(k.numpy()).sum(-1).max())))


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,model_name", [
    ("circulant", "bert"), ("circulant_block", "bert"), ("circulant_float", "gpt2"),
    ("circulant_diagonal", "bert"), ("circulant_diagonal_m2", "gpt2"), ("fourierft", "bert"),
    ("fourierft", "gpt2")])
def test_circfft_format_round_trip_is_exact(tmp_path, kind, model_name):
    model = _adapted(kind, model_name)
    y = _out(model)
    cnn.save_adapter(model, tmp_path / "a")
    assert sorted(os.listdir(tmp_path)) == ["a"]
    meta = json.loads((tmp_path / "a" / OUR_CFG).read_text())
    assert meta["format_version"] == cio.FORMAT_VERSION
    assert meta["config"] == model.circfft_adapters["default"].to_dict()
    fresh = MODELS[model_name]()
    rng = torch.get_rng_state()
    cnn.load_adapter(fresh, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), rng), "loading consumed global random numbers"
    assert fresh.circfft_adapters["default"] == model.circfft_adapters["default"]
    want, got = _adapter_tensors(model), _adapter_tensors(fresh)
    assert want.keys() == got.keys() and want
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert torch.equal(_out(fresh), y)


@pytest.mark.parametrize("kind,model_name", [("circulant", "bert"), ("fourierft", "bert"),
                                             ("fourierft", "gpt2")])
def test_peft_format_round_trip_is_exact(tmp_path, kind, model_name):
    model = _adapted(kind, model_name)
    y = _out(model)
    cnn.save_adapter(model, tmp_path / "p", format="peft")
    assert sorted(os.listdir(tmp_path / "p")) == [PEFT_CFG, PEFT_W]
    fresh = cnn.load_adapter(MODELS[model_name](), tmp_path / "p")
    want, got = _adapter_tensors(model), _adapter_tensors(fresh)
    assert want.keys() == got.keys() and want
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert torch.equal(_out(fresh), y)


def test_peft_file_layout_matches_stock_peft(tmp_path):
    """Same keys, dtypes, shapes and config fields as stock PEFT's save_pretrained."""
    model = _adapted("circulant", "bert_head", modules_to_save=["classifier"])
    cnn.save_adapter(model, tmp_path / "ours", format="peft")
    pm = peft.get_peft_model(_bert(head=True), peft.C3AConfig(
        block_size=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
    pm.save_pretrained(str(tmp_path / "stock"))
    ours = st.load_file(str(tmp_path / "ours" / PEFT_W))
    stock = st.load_file(str(tmp_path / "stock" / PEFT_W))
    assert {k: (v.dtype, v.shape) for k, v in ours.items()} == \
        {k: (v.dtype, v.shape) for k, v in stock.items()}
    c_ours = json.loads((tmp_path / "ours" / PEFT_CFG).read_text())
    c_stock = json.loads((tmp_path / "stock" / PEFT_CFG).read_text())
    assert sorted(c_ours) == sorted(c_stock)
    for field in ("peft_type", "block_size", "bias", "modules_to_save", "auto_mapping",
                  "task_type"):
        assert c_ours[field] == c_stock[field], field
    # PEFT keeps target_modules in a set: its saved order varies between runs.
    assert sorted(c_ours["target_modules"]) == sorted(c_stock["target_modules"])


# ---------------------------------------------------------------------------------------------
# Stock PEFT reads our peft-format directories
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,model_name", [
    ("circulant", "bert"), ("circulant_block", "bert"), ("fourierft", "bert"),
    ("fourierft", "gpt2"), ("circulant", "bert_head"), ("fourierft", "bert_head")])
def test_stock_peft_loads_our_peft_dirs(tmp_path, kind, model_name):
    mts = ["classifier"] if model_name == "bert_head" else None
    model = _adapted(kind, model_name, modules_to_save=mts)
    y = _out(model)
    cnn.save_adapter(model, tmp_path / "p", format="peft")
    pm = _peft_load(MODELS[model_name](), tmp_path / "p")
    n_adapted = len(cnn.model.adapter_layers(model))
    assert_close(_out(pm).numpy(), y.numpy(), _model_atol(y, n_adapted))
    # The network really changed (the comparison is not between two base models).
    assert not torch.allclose(_out(MODELS[model_name]()), y, atol=1e-3)
    # PEFT's dense update of each layer equals ours to rounding: every entry is a transform
    # output of the adapter tensor, whose norm ||dW||_F bounds.
    for path, layer in cnn.model.adapter_layers(model):
        ref = pm.base_model.model.get_submodule(path)
        with torch.no_grad():
            dw_ref = ref.get_delta_weight("default").double().numpy()
            dw = layer.delta_weight("default").double().numpy()
        n = max(layer.in_features, layer.out_features)
        assert_close(dw, dw_ref, 3 * tolerance(n, np.float32, float(np.linalg.norm(dw_ref))),
                     path)


def test_c3a_scale_folding(tmp_path):
    """scale="block" folds exactly when in/b is a power of two; a float scale with a factor
    that is not a power of two raises unless exact=False."""
    model = _adapted("circulant_block", "bert")              # in/b = 64/16 = 4
    cnn.save_adapter(model, tmp_path / "blk", format="peft")
    k = st.load_file(str(tmp_path / "blk" / PEFT_W))
    for path, layer in cnn.model.adapter_layers(model):
        w = layer.circ_kernel["default"].detach().numpy().astype(np.float64)
        kk = k[f"base_model.model.{path}.c3a_kernel"].numpy().astype(np.float64)
        assert np.array_equal(c3a_kernel_to_first_column(kk), 4.0 * w)   # exact
    model = _adapted("circulant_float", "bert")              # 0.37 * 64 is no power of two
    snap = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="power of two"):
        cnn.save_adapter(model, tmp_path / "flt", format="peft")
    assert sorted(os.listdir(tmp_path)) == snap
    cnn.save_adapter(model, tmp_path / "flt", format="peft", exact=False)
    y = _out(model)
    pm = _peft_load(_bert(), tmp_path / "flt")
    assert_close(_out(pm).numpy(), y.numpy(), _model_atol(y, 4))


# ---------------------------------------------------------------------------------------------
# circfft reads stock PEFT directories
# ---------------------------------------------------------------------------------------------
def _stock(kind, model_name, tmp_path, mts=None):
    base = MODELS[model_name]()
    if kind == "c3a":
        cfg = peft.C3AConfig(block_size=16, target_modules=TARGETS[model_name],
                             init_weights="gaussian", modules_to_save=mts)
    else:
        cfg = peft.FourierFTConfig(n_frequency=60, scaling=30.0, random_loc_seed=4,
                                   target_modules=TARGETS[model_name], modules_to_save=mts)
    pm = peft.get_peft_model(base, cfg).eval()
    _train_like(pm, seed=9)
    pm.save_pretrained(str(tmp_path / "stock"))
    return pm


@pytest.mark.parametrize("kind,model_name", [("c3a", "bert"), ("c3a", "bert_head"),
                                             ("fourierft", "bert"), ("fourierft", "gpt2"),
                                             ("fourierft", "bert_head")])
def test_circfft_loads_stock_peft_dirs(tmp_path, kind, model_name):
    mts = ["classifier"] if model_name == "bert_head" else None
    pm = _stock(kind, model_name, tmp_path, mts)
    y_ref = _out(pm)
    model = cnn.load_adapter(MODELS[model_name](), tmp_path / "stock")
    cfg = model.circfft_adapters["default"]
    assert cfg.target_modules == sorted(TARGETS[model_name])
    assert cfg.modules_to_save == mts
    n_adapted = len(cnn.model.adapter_layers(model))
    assert n_adapted == 2 * len(TARGETS[model_name])
    assert_close(_out(model).numpy(), y_ref.numpy(), _model_atol(y_ref, n_adapted))
    stock = st.load_file(str(tmp_path / "stock" / PEFT_W))
    for path, layer in cnn.model.adapter_layers(model):
        if kind == "c3a":
            k = stock[f"base_model.model.{path}.c3a_kernel"]
            # exact reindexing, and the update is C3A's dense map (oracle, float64)
            assert np.array_equal(layer.circ_kernel["default"].detach().numpy(),
                                  c3a_kernel_to_first_column(k.numpy()).astype(np.float32))
            dense = block_circulant_matrix_oracle(c3a_kernel_to_first_column(k.numpy())) / \
                layer.in_features
            atol = 3 * tolerance(16, np.float32, float(np.abs(dense).sum(1).max()))
        else:
            spec = stock[f"base_model.model.{path}.fourierft_spectrum"].numpy()
            rows, cols = pm.base_model.model.get_submodule(path).indices["default"].numpy()
            dense = fourierft_dense_oracle(spec, rows, cols, layer.out_features,
                                           layer.in_features, 30.0)
            atol = 3 * tolerance(layer.in_features * layer.out_features, np.float32,
                                 30.0 * float(np.linalg.norm(spec)))
        assert_close(layer.delta_weight("default").detach().double().numpy(), dense, atol,
                     path)
    if mts:
        w = stock["base_model.model.classifier.weight"]
        assert torch.equal(model.classifier.weight.detach(), w)
        assert model.classifier.weight.requires_grad


def test_peft_c3a_round_trip_through_circfft_is_bit_exact(tmp_path):
    _stock("c3a", "bert_head", tmp_path, mts=["classifier"])
    model = cnn.load_adapter(_bert(head=True), tmp_path / "stock")
    cnn.save_adapter(model, tmp_path / "again", format="peft")
    a = st.load_file(str(tmp_path / "stock" / PEFT_W))
    b = st.load_file(str(tmp_path / "again" / PEFT_W))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_stock_peft_layers_to_transform(tmp_path):
    """PEFT-only selection rules (layers_to_transform) load as the explicit module list."""
    pm = peft.get_peft_model(_bert(), peft.C3AConfig(
        block_size=16, target_modules=["query"], layers_to_transform=[1],
        init_weights="gaussian")).eval()
    pm.save_pretrained(str(tmp_path / "stock"))
    model = cnn.load_adapter(_bert(), tmp_path / "stock")
    assert model.circfft_adapters["default"].target_modules == \
        ["encoder.layer.1.attention.self.query"]
    y_ref = _out(pm)
    assert_close(_out(model).numpy(), y_ref.numpy(), _model_atol(y_ref, 1))


# ---------------------------------------------------------------------------------------------
# modules_to_save, existing adapters, names
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["circfft", "peft"])
def test_modules_to_save_round_trip(tmp_path, fmt):
    model = _adapted("circulant", "bert_head", modules_to_save=["classifier"])
    y = _out(model)
    cnn.save_adapter(model, tmp_path / "m", format=fmt)
    fresh = cnn.load_adapter(_bert(head=True), tmp_path / "m")
    for name in ("weight", "bias"):
        assert torch.equal(getattr(fresh.classifier, name), getattr(model.classifier, name))
    assert not torch.equal(_bert(head=True).classifier.weight, model.classifier.weight)
    assert torch.equal(_out(fresh), y)


def test_load_into_existing_adapter_and_under_another_name(tmp_path):
    model = _adapted("circulant", "bert")
    cnn.save_adapter(model, tmp_path / "a")
    other = _bert()
    cnn.inject(other, CONFIGS["circulant"](target_modules=["query", "value"]))
    cnn.load_adapter(other, tmp_path / "a")                  # replaces the values only
    assert torch.equal(_out(other), _out(model))
    cnn.load_adapter(other, tmp_path / "a", adapter_name="second")
    assert sorted(other.circfft_adapters) == ["default", "second"]
    a, b = _adapter_tensors(other, "default"), _adapter_tensors(other, "second")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # an existing adapter with another function (scale) is refused, model untouched
    third = _bert()
    cnn.inject(third, CONFIGS["circulant_block"](target_modules=["query", "value"]))
    snap = _snapshot(third)
    with pytest.raises(ValueError, match="scale"):
        cnn.load_adapter(third, tmp_path / "a")
    _assert_unchanged(third, snap)


def test_save_argument_errors(tmp_path):
    model = _adapted("circulant_diagonal", "bert")
    with pytest.raises(ValueError, match="no stock-PEFT counterpart"):
        cnn.save_adapter(model, tmp_path / "x", format="peft")
    with pytest.raises(ValueError, match="format"):
        cnn.save_adapter(model, tmp_path / "x", format="lora")
    with pytest.raises(ValueError, match="no such adapter"):
        cnn.save_adapter(model, tmp_path / "x", adapter_name="nope")
    with pytest.raises(TypeError, match="path"):
        cnn.save_adapter(model, 3)
    with pytest.raises(TypeError, match="model"):
        cnn.save_adapter("model", tmp_path / "x")
    conv = _adapted("circulant", "gpt2")
    with pytest.raises(ValueError, match="Conv1D"):
        cnn.save_adapter(conv, tmp_path / "x", format="peft")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
def _dir_bytes(p):
    return {f: (p / f).read_bytes() for f in sorted(os.listdir(p))}


@pytest.mark.parametrize("stage", ["safetensors", "json", "rename"])
def test_failed_save_leaves_old_directory_intact(tmp_path, monkeypatch, stage):
    model = _adapted("circulant", "bert")
    target = tmp_path / "ad"
    cnn.save_adapter(model, target)
    before = _dir_bytes(target)
    _train_like(model, seed=77)                                # new values to write

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    if stage == "safetensors":
        monkeypatch.setattr(st, "save_file", boom)
    elif stage == "json":
        monkeypatch.setattr(cio, "write_json", boom)
    else:
        real, calls = os.replace, []

        def second_fails(src, dst):                            # old aside, then new in: fail
            calls.append(dst)
            if len(calls) == 2:
                raise OSError("rename failed (simulated)")
            return real(src, dst)
        monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="simulated"):
        cnn.save_adapter(model, target)
    assert sorted(os.listdir(tmp_path)) == ["ad"], "temporary directory left behind"
    assert _dir_bytes(target) == before
    monkeypatch.undo()
    cnn.save_adapter(model, target)                            # and a later save replaces it
    assert _dir_bytes(target) != before
    assert sorted(os.listdir(tmp_path)) == ["ad"]


def test_save_refuses_to_replace_foreign_paths(tmp_path):
    model = _adapted("circulant", "bert")
    (tmp_path / "file").write_text("x")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("keep me")
    for p in (tmp_path / "file", tmp_path / "proj"):
        with pytest.raises(ValueError, match="refusing"):
            cnn.save_adapter(model, p)
    assert (tmp_path / "proj" / "train.py").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["file", "proj"]


# ---------------------------------------------------------------------------------------------
# Bad files: ValueError, model unchanged
# ---------------------------------------------------------------------------------------------
def _edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _edit_tensors(path, fn):
    t = st.load_file(str(path))
    fn(t)
    st.save_file(t, str(path))


def _first(t, suffix):
    return next(k for k in sorted(t) if k.endswith(suffix))


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory):
    """label -> (directory, model factory, message regex) for every kind of bad file."""
    tmp_path = tmp_path_factory.mktemp("bad")
    src = _adapted("circulant", "bert")
    cnn.save_adapter(src, tmp_path / "c")
    cnn.save_adapter(src, tmp_path / "p", format="peft")
    ft = _adapted("fourierft", "bert")
    cnn.save_adapter(ft, tmp_path / "f", format="peft")
    cases = []

    def variant(label, base, edit, msg, model=_bert):
        d = tmp_path / label
        d.mkdir()
        for f in os.listdir(tmp_path / base):
            (d / f).write_bytes((tmp_path / base / f).read_bytes())
        edit(d)
        cases.append((label, d, model, msg))

    def shape(d, wname=OUR_W):
        def fn(t):
            k = _first(t, "circ_kernel" if wname == OUR_W else "c3a_kernel")
            t[k] = torch.zeros(4, 4, 8)
        _edit_tensors(d / wname, fn)

    variant("c_shape", "c", shape, r"shape \(4, 4, 8\).*expects \(4, 4, 16\)")
    variant("p_shape", "p", lambda d: shape(d, PEFT_W), r"shape \(4, 4, 8\)")
    variant("c_block", "c", lambda d: _edit_json(
        d / OUR_CFG, config={**json.loads((d / OUR_CFG).read_text())["config"],
                             "block_size": 32}), r"expects \(2, 2, 32\)")
    variant("p_block", "p", lambda d: _edit_json(d / PEFT_CFG, block_size=32),
            r"expects \(2, 2, 32\)")
    variant("p_block_bad", "p", lambda d: _edit_json(d / PEFT_CFG, block_size=48),
            "block_size=48")
    variant("f_nfreq", "f", lambda d: _edit_json(d / PEFT_CFG, n_frequency=70),
            r"expects \(70,\)")
    variant("f_nfreq_big", "f", lambda d: _edit_json(d / PEFT_CFG, n_frequency=10**6),
            "n_frequency")
    variant("f_pattern", "f", lambda d: _edit_json(d / PEFT_CFG, n_frequency_pattern={
        "query": 10}), "n_frequency_pattern")
    variant("p_type", "p", lambda d: _edit_json(d / PEFT_CFG, peft_type="LORA"),
            "peft_type 'LORA' is not supported")
    variant("p_bias", "p", lambda d: _edit_json(d / PEFT_CFG, bias="all"), "bias")
    variant("c_version", "c", lambda d: _edit_json(d / OUR_CFG, format_version=99),
            "format_version")
    variant("c_type", "c", lambda d: _edit_json(
        d / OUR_CFG, config={"adapter_type": "lora"}), "adapter_type")
    variant("c_nojson", "c", lambda d: (d / OUR_CFG).write_text("{not json"), "cannot read")
    variant("c_nowt", "c", lambda d: (d / OUR_W).unlink(), "missing adapter weights")
    variant("p_nowt", "p", lambda d: (d / PEFT_W).unlink(), "missing adapter weights")
    variant("p_nocfg", "p", lambda d: (d / PEFT_CFG).unlink(), "not an adapter directory")
    variant("c_corrupt", "c", lambda d: (d / OUR_W).write_bytes(b"\x08\x00garbage"),
            "cannot read adapter weights")
    variant("c_int", "c", lambda d: _edit_tensors(
        d / OUR_W, lambda t: t.update({_first(t, "circ_kernel"): torch.zeros(
            4, 4, 16, dtype=torch.int32)})), "floating dtype")
    variant("c_extra", "c", lambda d: _edit_tensors(
        d / OUR_W, lambda t: t.update({"pooler.dense.weight": torch.zeros(64, 64)})),
        "unexpected tensors")
    variant("p_extra", "p", lambda d: _edit_tensors(
        d / PEFT_W, lambda t: t.update({"base_model.model.pooler.dense.weight":
                                        torch.zeros(64, 64)})), "unexpected tensor")
    variant("p_prefix", "p", lambda d: _edit_tensors(
        d / PEFT_W, lambda t: t.update({"encoder.x": torch.zeros(1)})), "base_model.model.")
    variant("p_missing", "p", lambda d: _edit_tensors(
        d / PEFT_W, lambda t: t.pop(_first(t, "c3a_kernel"))), "select modules")
    variant("c_absent", "c", lambda d: None, "absent from the model",
            model=lambda: _bert(layers=1))
    variant("p_absent", "p", lambda d: None, "absent from the model",
            model=lambda: _bert(layers=1))
    variant("c_conv", "c", lambda d: None, "absent from the model", model=_gpt2)
    cases.append(("nodir", tmp_path / "missing", _bert, "does not exist"))
    assert [c[0] for c in cases] == BAD_LABELS
    return {label: rest for label, *rest in cases}


BAD_LABELS = ["c_shape", "p_shape", "c_block", "p_block", "p_block_bad", "f_nfreq",
              "f_nfreq_big", "f_pattern", "p_type", "p_bias", "c_version", "c_type", "c_nojson",
              "c_nowt",
              "p_nowt", "p_nocfg", "c_corrupt", "c_int", "c_extra", "p_extra", "p_prefix",
              "p_missing", "c_absent", "p_absent", "c_conv", "nodir"]


@pytest.mark.parametrize("label", BAD_LABELS)
def test_every_bad_file_raises_and_leaves_model_unchanged(bad_dirs, label):
    d, factory, msg = bad_dirs[label]
    for prepared in (False, True):
        model = factory()
        if prepared:      # a model that already holds another adapter
            other = "c_proj" if factory is _gpt2 else "key"
            cnn.inject(model, cnn.FourierFTConfig(n_frequency=5, target_modules=[other]),
                       "other")
        snap = _snapshot(model)
        with pytest.raises(ValueError, match=msg):
            cnn.load_adapter(model, d)
        _assert_unchanged(model, snap)


def test_wrong_shape_into_existing_adapter_leaves_values(tmp_path):
    src = _adapted("circulant", "bert")
    cnn.save_adapter(src, tmp_path / "c")
    _edit_tensors(tmp_path / "c" / OUR_W, lambda t: t.update(
        {_first(t, "circ_kernel"): torch.zeros(4, 4, 8)}))
    model = _adapted("circulant", "bert")
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"has shape \(4, 4, 8\), the model expects"):
        cnn.load_adapter(model, tmp_path / "c")
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("prepared", [False, True], ids=["fresh", "with_other_adapter"])
def test_failure_after_injection_is_undone(tmp_path, monkeypatch, prepared):
    src = _adapted("circulant", "bert_head", modules_to_save=["classifier"])
    cnn.save_adapter(src, tmp_path / "c")
    model = _bert(head=True)
    if prepared:
        cnn.inject(model, cnn.CirculantConfig(block_size=8, target_modules=["query"]), "other")
    snap = _snapshot(model)
    real = cio._copy_values

    def copy_then_fail(model, copies, adapter_name):
        real(model, copies, adapter_name)                       # everything written...
        raise RuntimeError("late failure (simulated)")          # ...then a failure

    monkeypatch.setattr(cio, "_copy_values", copy_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        cnn.load_adapter(model, tmp_path / "c")
    _assert_unchanged(model, snap)


def test_load_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="model"):
        cnn.load_adapter(None, tmp_path)
    with pytest.raises(ValueError, match="adapter_name"):
        cnn.load_adapter(_bert(), tmp_path, adapter_name="a.b")


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["circfft", "peft"])
def test_cuda_model_save_and_load(tmp_path, fmt):
    """Tensors of a CUDA model are written from the device and loaded onto it."""
    model = _adapted("circulant", "bert_head", modules_to_save=["classifier"]).cuda()
    ids = _ids().cuda()
    y = _out(model, ids)
    cnn.save_adapter(model, tmp_path / "g", format=fmt)
    fresh = cnn.load_adapter(_bert(head=True).cuda(), tmp_path / "g")
    for k, v in _adapter_tensors(fresh).items():
        assert v.is_cuda, k
    # (exactness is checked on the CPU; GPU kernels need not be bitwise reproducible)
    assert_close(_out(fresh, ids).cpu().numpy(), y.cpu().numpy(), _model_atol(y.cpu(), 4))
