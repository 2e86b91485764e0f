"""Model-level adapter API of circfft.nn: injection, trainability, merge/unload, report, errors.

Models are tiny transformers built from configs (never downloaded).
"""
from __future__ import annotations


import numpy as np
import pytest

from conftest import require

torch = require("torch")
transformers = require("transformers")

from oracles import assert_close, matmul_tolerance  # noqa: E402
from _adapter_checks import (base_weight, check_layer_output, delta_atol,  # noqa: E402
                             oracle_delta, record_layer_io)

import circfft.nn as cnn  # noqa: E402
from circfft.nn.layers import AdapterLayer  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _bert(intermediate=128, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=intermediate, vocab_size=100,
                                  max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def _gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=100,
                                  n_positions=32, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(cfg).eval()


def _ids(seed=0):
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(seed))


def _out(model, ids):
    return model(input_ids=ids).last_hidden_state


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            dict(getattr(model, "circfft_adapters", {})))


def _assert_same(model, snap):
    sd, mods, flags, adapters = snap
    now = model.state_dict()
    assert list(now) == list(sd)
    assert all(torch.equal(now[k], v) for k, v in sd.items())
    assert [(n, type(m)) for n, m in model.named_modules()] == mods
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == flags
    assert dict(getattr(model, "circfft_adapters", {})) == adapters


def _wrapped(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def _adapter_numel(model):
    return sum(p.numel() for m in _wrapped(model).values() for attr in m.adapter_param_names
               for p in getattr(m, attr).values())


# ---------------------------------------------------------------------------------------------
# Injection
# ---------------------------------------------------------------------------------------------
def test_inject_suffix_list_replaces_and_freezes():
    model = _bert()
    ids = _ids()
    ref = _out(model, ids)
    originals = {n: m for n, m in model.named_modules() if n.endswith((".query", ".value"))}
    out = cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query", "value"]))
    assert out is model
    wrapped = _wrapped(model)
    assert sorted(wrapped) == sorted(originals)
    for name, layer in wrapped.items():
        assert isinstance(layer, cnn.CirculantAdapter)
        assert layer.base_layer is originals[name]
        assert layer.circ_kernel["default"].shape == (4, 4, 16)
    assert set(model.circfft_adapters) == {"default"}
    # Zero init: the adapted model is the base model exactly.
    assert torch.equal(_out(model, ids), ref)
    trainable, total = cnn.trainable_parameters(model)
    assert trainable == _adapter_numel(model) == 4 * 64 * 64 // 16
    assert total == sum(p.numel() for p in model.parameters())
    for n, p in model.named_parameters():
        assert p.requires_grad == (".circ_kernel." in n), n
    assert any(k.endswith("attention.self.query.circ_kernel.default")
               for k in model.state_dict())
    # Gradients reach the kernels (zero init, non-zero gradient) and nothing else.
    _out(model, ids).square().sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().max() > 0, n
        else:
            assert p.grad is None, n


def test_inject_regex_and_exclude():
    model = _bert()
    cnn.inject(model, cnn.FourierFTConfig(
        n_frequency=50, target_modules=r".*attention\.self\.(query|key)"))
    assert sorted(_wrapped(model)) == [f"encoder.layer.{i}.attention.self.{k}"
                                       for i in (0, 1) for k in ("key", "query")]
    model = _bert()
    cnn.inject(model, cnn.CirculantDiagonalConfig(target_modules=["dense"],
                                                  exclude_modules=["attention.output.dense",
                                                                   "pooler.dense"]))
    assert sorted(_wrapped(model)) == [f"encoder.layer.{i}.{k}.dense"
                                       for i in (0, 1) for k in ("intermediate", "output")]
    model = _bert()
    cnn.inject(model, cnn.CirculantConfig(block_size=32, target_modules=r".*\.dense",
                                          exclude_modules=r"encoder\.layer\.1\..*"))
    assert sorted(_wrapped(model)) == sorted(
        ["encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate.dense",
         "encoder.layer.0.output.dense", "pooler.dense"])


def test_target_none_and_modules_to_save():
    model = _bert()
    cnn.inject(model, cnn.CirculantConfig(block_size=64, target_modules=None,
                                          modules_to_save=["pooler"]))
    names = sorted(_wrapped(model))
    assert len(names) == 12 and not any(n.startswith("pooler") for n in names)
    pooler = {n for n, _ in model.pooler.named_parameters()}
    for n, p in model.named_parameters():
        if n.startswith("pooler."):
            assert p.requires_grad, n
        else:
            assert p.requires_grad == (".circ_kernel." in n), n
    trainable, _ = cnn.trainable_parameters(model)
    assert trainable == _adapter_numel(model) + sum(
        p.numel() for p in model.pooler.parameters())
    assert pooler == {"dense.weight", "dense.bias"}


def test_second_adapter_name_adds_to_wrapped_layers():
    model = _bert()
    ids = _ids()
    cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query"],
                                          init="normal"))
    cnn.inject(model, cnn.CirculantConfig(block_size=8, target_modules=["query", "key"],
                                          init="normal"), adapter_name="second")
    wrapped = _wrapped(model)
    q = wrapped["encoder.layer.0.attention.self.query"]
    assert sorted(q.configs) == ["default", "second"] and q.active_adapters == ["default",
                                                                                  "second"]
    assert sorted(wrapped["encoder.layer.0.attention.self.key"].configs) == ["second"]
    assert set(model.circfft_adapters) == {"default", "second"}
    # Both summed: every wrapped layer computes x (W + dW_default + dW_second)^T + b (the
    # oracle's deltas) on the activations it receives in the model, within the derived bound.
    with record_layer_io(model) as seen:
        _out(model, ids)
    assert sorted(seen) == sorted(wrapped)
    for name, layer in wrapped.items():
        assert layer.active_adapters == sorted(layer.configs)
        check_layer_output(layer, *seen[name], what=name)
    cnn.set_adapter(model, "second")
    assert q.active_adapters == ["second"]
    assert not q.circ_kernel["default"].requires_grad and q.circ_kernel["second"].requires_grad
    with pytest.raises(ValueError, match="not in the model"):
        cnn.set_adapter(model, ["third"])


def _check_and_expect_merge(wrapped, seen):
    """Check every adapted layer's recorded output against the oracle; return, per layer, what
    merging must give -- the oracle's ``W + dW`` in the stored orientation and its bound (the
    delta's build error and one float32 rounding of the sum) -- and the adapted output's
    bound."""
    expected = {}
    assert sorted(seen) == sorted(wrapped)
    for name, layer in wrapped.items():
        _, adapted_atol = check_layer_output(layer, *seen[name], what=name)
        W, D = base_weight(layer), oracle_delta(layer)
        atol = delta_atol(layer) + EPS32 * (np.abs(W + D) + np.abs(D))
        if layer.fan_in_fan_out:
            W, D, atol = W.T, D.T, np.transpose(atol)
        expected[name] = (W + D, atol, adapted_atol)
    return expected


def _check_merged_layers(plain, expected, seen):
    """After merge_and_unload: each merged weight is the oracle's W + dW to its bound, and the
    plain layer fed the activations the adapted layer received gives the adapted layer's
    recorded output, within the sum of the bounds: its own float32 product, the merged
    weight's distance to the oracle (carried by ``sum |x|``) and the adapted output's bound
    against the same oracle."""
    for name, (w_expected, atol, adapted_atol) in expected.items():
        module = plain.get_submodule(name)
        assert type(module).__name__ in ("Linear", "Conv1D"), name
        w = module.weight.detach().double().numpy()
        assert_close(w, w_expected, atol, f"merged weight {name}")
        x64, y_adapted = seen[name]
        with torch.no_grad():
            y_plain = module(torch.from_numpy(x64).float()).double().numpy()
        w_out_in = w.T if type(module).__name__ == "Conv1D" else w
        exact = x64 @ w_out_in.T + module.bias.detach().double().numpy()
        prod = matmul_tolerance(x64, w_out_in, np.float32) + EPS32 * np.abs(exact)
        shift = float(np.abs(atol).max()) * float(np.abs(x64).sum(axis=1).max())
        assert_close(y_plain, y_adapted, prod + shift + adapted_atol,
                     f"merged layer {name} vs the adapted one")


def test_merge_and_unload_gives_plain_model_with_same_outputs():
    model = _bert()
    ids = _ids()
    originals = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query", "dense"],
                                          init="normal", scale="block"))
    with record_layer_io(model) as seen:
        y = _out(model, ids).detach()
    wrapped = _wrapped(model)
    expected = _check_and_expect_merge(wrapped, seen)
    plain = cnn.merge_and_unload(model)
    assert plain is model
    assert not _wrapped(plain) and not hasattr(plain, "circfft_adapters")
    now = {n: m for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear)}
    assert now.keys() == originals.keys()
    assert all(now[n] is originals[n] for n in now)
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
    _check_merged_layers(plain, expected, seen)
    assert _out(plain, ids).shape == y.shape


def test_unload_restores_weights_exactly():
    model = _bert()
    ids = _ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y0 = _out(model, ids)
    cnn.inject(model, cnn.FourierFTConfig(n_frequency=100, target_modules=["value"]))
    assert not torch.equal(_out(model, ids), y0)
    plain = cnn.unload(model)
    assert list(plain.state_dict()) == list(before)
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    assert torch.equal(_out(plain, ids), y0)


def test_disable_adapters_model_level():
    model = _bert()
    ids = _ids()
    y0 = _out(model, ids)
    cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query", "value"],
                                          init="normal"))
    y1 = _out(model, ids)
    assert not torch.allclose(y1, y0)
    with cnn.disable_adapters(model):
        assert torch.equal(_out(model, ids), y0)
    assert torch.equal(_out(model, ids), y1)


def test_gpt2_conv1d_injection_and_merge():
    model = _gpt2()
    ids = _ids(1)
    y0 = _out(model, ids)
    cnn.inject(model, cnn.CirculantConfig(block_size=32, target_modules=["c_attn", "c_fc"],
                                          init="normal"))
    wrapped = _wrapped(model)
    assert len(wrapped) == 4
    for layer in wrapped.values():
        assert layer.fan_in_fan_out and layer.in_features == 64
    attn = wrapped["h.0.attn.c_attn"]
    assert attn.out_features == 192 and attn.circ_kernel["default"].shape == (6, 2, 32)
    with record_layer_io(model) as seen:
        y = _out(model, ids).detach()
    assert not torch.allclose(y, y0)
    expected = _check_and_expect_merge(wrapped, seen)
    plain = cnn.merge_and_unload(model)
    assert type(plain.h[0].attn.c_attn).__name__ == "Conv1D"
    _check_merged_layers(plain, expected, seen)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def test_adapter_report_and_format():
    model = _bert()
    cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query",
                                                                         "intermediate.dense"]))
    cnn.inject(model, cnn.FourierFTConfig(n_frequency=30, target_modules=["value"]), "ft")
    rows = cnn.adapter_report(model)
    assert len(rows) == 6
    wrapped = _wrapped(model)
    for r in rows:
        layer = wrapped[r["name"]]
        assert (r["in"], r["out"]) == (layer.in_features, layer.out_features)
        numel = sum(getattr(layer, a)[r["adapter"]].numel() for a in layer.adapter_param_names
                    if r["adapter"] in getattr(layer, a))
        assert r["params"] == numel
        assert r["base_params"] == r["in"] * r["out"]
        if r["type"] == "circulant":
            b = 16
            fft = 2.5 * b * np.log2(b)
            assert r["flops_per_token"] == pytest.approx(
                (r["in"] + r["out"]) / b * fft + 4 * r["in"] * r["out"] / b)
        else:
            assert r["adapter"] == "ft" and r["params"] == 30
    text = cnn.format_report(model)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["name", "adapter", "type"]
    assert lines[-1].startswith("total")
    total = sum(r["params"] for r in rows)
    assert f"{total:,}" in lines[-1]
    assert cnn.format_report(rows) == text
    assert sum(r["params"] for r in rows) == cnn.trainable_parameters(model)[0]


# ---------------------------------------------------------------------------------------------
# Bad input: errors name the problem and leave the model unchanged
# ---------------------------------------------------------------------------------------------
def test_block_size_not_dividing_a_later_target_changes_nothing():
    model = _bert(intermediate=96)      # intermediate.dense: 64 -> 96, gcd 32
    snap = _snapshot(model)
    with pytest.raises(ValueError) as err:
        cnn.inject(model, cnn.CirculantConfig(block_size=64,
                                              target_modules=["query", "intermediate.dense"]))
    msg = str(err.value)
    assert "encoder.layer.0.intermediate.dense" in msg and "block_size=64" in msg
    assert "[1, 2, 4, 8, 16, 32]" in msg
    _assert_same(model, snap)


def test_n_frequency_too_large_for_a_later_target_changes_nothing():
    model = _bert()
    snap = _snapshot(model)
    # encoder.layer.0.intermediate.dense (64 x 128) comes first in module order and fits; the
    # later encoder.layer.1.attention.output.dense (64 x 64 = 4096 < 5000) does not.
    with pytest.raises(ValueError, match="n_frequency=5000.*encoder.layer.1.attention.output"):
        cnn.inject(model, cnn.FourierFTConfig(
            n_frequency=5000,
            target_modules=["intermediate.dense", "layer.1.attention.output.dense"]))
    _assert_same(model, snap)


def test_unmatched_names_list_close_candidates():
    model = _bert()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"'qurey'.*'query'"):
        cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["value", "qurey"]))
    with pytest.raises(ValueError, match="regex"):
        cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=r".*nothing.*"))
    with pytest.raises(ValueError, match=r"modules_to_save.*'polar'.*pooler"):
        cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query"],
                                              modules_to_save=["polar"]))
    with pytest.raises(ValueError, match="excluded"):
        cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query"],
                                              exclude_modules=["query"]))
    _assert_same(model, snap)


def test_unsupported_module_type_is_named():
    model = _bert()
    snap = _snapshot(model)
    with pytest.raises(TypeError) as err:
        cnn.inject(model, cnn.CirculantConfig(block_size=16,
                                              target_modules=["query", "LayerNorm"]))
    msg = str(err.value)
    assert "'embeddings.LayerNorm'" in msg and "torch.nn.modules.normalization.LayerNorm" in msg
    assert "torch.nn.Linear" in msg and "Conv1D" in msg
    with pytest.raises(TypeError, match="BertSelfAttention"):
        cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=r".*self"))
    with pytest.raises(TypeError, match="config must be"):
        cnn.inject(model, {"block_size": 16})
    _assert_same(model, snap)


def test_errors_after_a_first_injection_change_nothing():
    model = _bert()
    cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["query"]))
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["key"]))
    with pytest.raises(TypeError, match="one layer holds one adapter family"):
        cnn.inject(model, cnn.FourierFTConfig(n_frequency=10, target_modules=["key", "query"]),
                   "ft")
    with pytest.raises(ValueError, match="block_size=48"):
        cnn.inject(model, cnn.CirculantConfig(block_size=48, target_modules=["query"]), "b")
    with pytest.raises(ValueError, match="adapter_name"):
        cnn.inject(model, cnn.CirculantConfig(block_size=16, target_modules=["key"]), "a.b")
    _assert_same(model, snap)
    # The adapter layers themselves are targets (not their base_layer children).
    cnn.inject(model, cnn.CirculantConfig(block_size=8, target_modules=r".*query.*"), "two")
    assert all(not n.endswith("base_layer") for n in _wrapped(model))
    assert sorted(_wrapped(model)["encoder.layer.1.attention.self.query"].configs) == [
        "default", "two"]
