"""Adapter save/load (circfft.nn.io) beyond float32: float16, bfloat16 and float64 models,
saving a model whose adapter is merged, the PEFT format under a non-default adapter name, and
loading into a merged adapter.

Same tiny models as ``test_nn_io.py`` (built from configs, nothing downloaded).  Adapters keep
their compute dtype (float32 for half-precision models, float64 for float64 models), so a round
trip through a file must give back the same tensors bit for bit and the same outputs bit for
bit; a float64 adapter loaded into a float32 model is rounded once.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import require

torch = require("torch")
transformers = require("transformers")
peft = require("peft")
st = require("safetensors.torch")

import circfft.nn as cnn  # noqa: E402
from _adapter_checks import check_layer_output, record_layer_io  # noqa: E402

HIDDEN = 64
PEFT_CFG, PEFT_W = "adapter_config.json", "adapter_model.safetensors"
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}
COMPUTE = {torch.float16: torch.float32, torch.bfloat16: torch.float32,
           torch.float64: torch.float64, torch.float32: torch.float32}


def _bert(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=2 * HIDDEN,
                                  vocab_size=100)
    return transformers.BertModel(cfg).eval().to(dtype)


def _ids():
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    ids[0, :5] = torch.tensor([0, 1, 2, 3, 99])
    return ids


def _out(model):
    with torch.no_grad():
        return model(input_ids=_ids()).last_hidden_state


CONFIGS = {
    "circulant": lambda **kw: cnn.CirculantConfig(block_size=16, init="normal", **kw),
    "circulant_diagonal": lambda **kw: cnn.CirculantDiagonalConfig(factors=2, init="normal",
                                                                   **kw),
    "fourierft": lambda **kw: cnn.FourierFTConfig(n_frequency=60, scaling=30.0,
                                                  random_loc_seed=11, **kw),
}


def _adapted(kind, dtype=torch.float32, name="default"):
    model = _bert(dtype)
    cnn.inject(model, CONFIGS[kind](target_modules=["query", "value"]), name)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
                       .to(p.dtype))
    return model


def _tensors(model, name="default"):
    out = {}
    for path, layer in cnn.model.adapter_layers(model):
        for attr, p in (layer.adapter_parameters(name) if name in layer.configs else []):
            out[f"{path}.{attr}"] = p.detach().clone()
    return out


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, list(m.active_adapters), list(m.merged_adapters))
             for n, m in cnn.model.adapter_layers(model)])


def _assert_same(model, snap):
    state, layers = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert [(n, list(m.active_adapters), list(m.merged_adapters))
            for n, m in cnn.model.adapter_layers(model)] == layers


def _formats(kind):
    return ["circfft"] + (["peft"] if kind != "circulant_diagonal" else [])


# ---------------------------------------------------------------------------------------------
# Models in float16, bfloat16, float64
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_round_trip_in_every_model_dtype(tmp_path, kind, dtype):
    model = _adapted(kind, dtype)
    y = _out(model)
    assert y.dtype == dtype
    want = _tensors(model)
    assert want and all(t.dtype == COMPUTE[dtype] for t in want.values())
    for fmt in _formats(kind):
        cnn.save_adapter(model, tmp_path / fmt, format=fmt)
        fresh = cnn.load_adapter(_bert(dtype), tmp_path / fmt)
        got = _tensors(fresh)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype, (fmt, k, got[k].dtype)
            assert torch.equal(got[k], want[k]), (fmt, k)
        assert torch.equal(_out(fresh), y), fmt
    # the adapted layers compute base + update from the oracle on their real activations
    with record_layer_io(fresh) as seen:
        _out(fresh)
    for path, layer in cnn.model.adapter_layers(fresh):
        if dtype in (torch.float16, torch.bfloat16):
            continue          # half outputs: covered by test_nn_layers.test_half_precision_base
        check_layer_output(layer, *seen[path], what=path)


@pytest.mark.parametrize("kind", ["circulant", "fourierft"])
def test_float64_adapter_into_float32_model_and_back(tmp_path, kind):
    """float64 -> file -> float32 model: every value rounded once; float32 -> file -> float64
    model: every value exactly (widening)."""
    m64 = _adapted(kind, torch.float64)
    cnn.save_adapter(m64, tmp_path / "a64")
    m32 = cnn.load_adapter(_bert(torch.float32), tmp_path / "a64")
    src, got = _tensors(m64), _tensors(m32)
    for k in src:
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], src[k].to(torch.float32)), k
    cnn.save_adapter(m32, tmp_path / "a32")
    back = _tensors(cnn.load_adapter(_bert(torch.float64), tmp_path / "a32"))
    for k in src:
        assert back[k].dtype == torch.float64
        assert torch.equal(back[k], got[k].to(torch.float64)), k


# ---------------------------------------------------------------------------------------------
# Merged adapters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_saving_a_merged_model_saves_the_adapter(tmp_path, kind):
    """Merging changes the base weights, not the adapter: a merged model saves the adapter's
    own tensors (not W + dW, not zeros), saving changes nothing, and loading the file into a
    fresh model gives the unmerged model's output bit for bit."""
    model = _adapted(kind)
    y_unmerged = _out(model)
    want = _tensors(model)
    layers = cnn.model.adapter_layers(model)
    for _, layer in layers:
        layer.merge()
        assert layer.merged_adapters == ["default"]
    snap = _snapshot(model)
    for fmt in _formats(kind):
        cnn.save_adapter(model, tmp_path / fmt, format=fmt)
        _assert_same(model, snap)
        fresh = cnn.load_adapter(_bert(), tmp_path / fmt)
        got = _tensors(fresh)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), (fmt, k)
        assert torch.equal(_out(fresh), y_unmerged), fmt
        for _, layer in cnn.model.adapter_layers(fresh):
            assert layer.merged_adapters == []


@pytest.mark.parametrize("kind", ["circulant", "fourierft"])
def test_loading_into_a_merged_adapter_is_refused(tmp_path, kind):
    src = _adapted(kind)
    cnn.save_adapter(src, tmp_path / "a")
    model = _adapted(kind)
    layer = cnn.model.adapter_layers(model)[0][1]
    layer.merge()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="merged"):
        cnn.load_adapter(model, tmp_path / "a")
    _assert_same(model, snap)
    # once unmerged, the same load replaces the values
    layer.unmerge()
    cnn.load_adapter(model, tmp_path / "a")
    got, want = _tensors(model), _tensors(src)
    assert all(torch.equal(got[k], want[k]) for k in want)


# ---------------------------------------------------------------------------------------------
# PEFT format under another adapter name
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["circulant", "fourierft"])
def test_peft_format_under_a_non_default_adapter_name(tmp_path, kind):
    """An adapter named "task" saved in PEFT's format: the same files as under "default" (PEFT
    keys carry no adapter name), stock PEFT loads them, and circfft loads them back under any
    name bit for bit."""
    named = _adapted(kind, name="task")
    default = _adapted(kind)                              # the same values under "default"
    assert all(torch.equal(a, b) for a, b in zip(_tensors(named, "task").values(),
                                                   _tensors(default).values()))
    cnn.save_adapter(named, tmp_path / "task", format="peft", adapter_name="task")
    cnn.save_adapter(default, tmp_path / "default", format="peft")
    a = st.load_file(str(tmp_path / "task" / PEFT_W))
    b = st.load_file(str(tmp_path / "default" / PEFT_W))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = json.loads((tmp_path / "task" / PEFT_CFG).read_text())
    cb = json.loads((tmp_path / "default" / PEFT_CFG).read_text())
    ca["target_modules"], cb["target_modules"] = (sorted(c["target_modules"]) for c in (ca, cb))
    assert ca == cb
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(_bert(), str(tmp_path / "task")).eval()
    assert not [str(w.message) for w in caught if "keys" in str(w.message).lower()]
    # stock PEFT's layers hold exactly our values (its own adapter name is "default")
    for path, layer in cnn.model.adapter_layers(named):
        ref = pm.base_model.model.get_submodule(path)
        if kind == "fourierft":
            assert torch.equal(ref.fourierft_spectrum["default"].detach(),
                               layer.fourierft_spectrum["task"].detach())
    for name in ("task", "other"):
        back = cnn.load_adapter(_bert(), tmp_path / "task", adapter_name=name)
        assert sorted(back.circfft_adapters) == [name]
        got = _tensors(back, name)
        want = _tensors(named, "task")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert torch.equal(_out(back), _out(named))
    assert not np.array_equal(_out(_bert()).numpy(), _out(named).numpy())
