"""Inputs that must be refused cleanly, before anything is written, and inputs that must work.

Each test here was written against a bug found by a hostile-but-realistic campaign: in-place
transforms of autograd leaves that overwrote the leaf before raising, self-overlapping numpy
views accepted as outputs, crashes on empty transform axes and integer tensors, and values
silently converted or accepted by the validators.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import circfft
from conftest import require
from oracles import assert_close


# ---------------------------------------------------------------------------------------------
# Errors before the first write
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [circfft.rdfft, circfft.irdfft])
def test_inplace_on_autograd_leaf_raises_before_writing(fn):
    torch = require("torch")
    leaf = torch.arange(16, dtype=torch.float64).reshape(2, 8).requires_grad_()
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        fn(leaf, out=leaf)
    assert torch.equal(leaf.detach(), before)          # as torch's own leaf.mul_(2)
    view = leaf[1]
    with pytest.raises(RuntimeError, match="view of a leaf"):
        fn(view, out=view)
    assert torch.equal(leaf.detach(), before)
    with pytest.raises(RuntimeError):
        leaf.mul_(2)                                     # torch's behaviour, for reference
    assert torch.equal(leaf.detach(), before)


def test_inplace_on_inference_tensor_outside_inference_mode_raises_before_writing():
    torch = require("torch")
    with torch.inference_mode():
        t = torch.arange(8.0)
    before = t.clone()
    with pytest.raises(RuntimeError, match="inference tensor"):
        circfft.rdfft(t, out=t)
    assert torch.equal(t, before)


def _self_overlapping(backing):
    """Rows 16 long starting one element apart: element (i, j) is backing[i + j]."""
    return np.lib.stride_tricks.as_strided(backing, (4, 16), (8, 8))


@pytest.mark.parametrize("fn", [circfft.rdfft, circfft.irdfft])
def test_numpy_view_with_overlapping_elements(fn, backend):
    backing = np.arange(32, dtype=np.float64)
    v = _self_overlapping(backing)
    assert v.flags.writeable
    with pytest.raises(ValueError, match="sharing memory"):
        fn(v, out=v, backend=backend)
    assert np.array_equal(backing, np.arange(32.0))
    # overwrite_x is a hint: such a view is not used as the output buffer
    got = fn(v, overwrite_x=True, backend=backend)
    assert np.array_equal(backing, np.arange(32.0))
    assert not np.shares_memory(got, backing)
    assert_close(got, fn(np.array(v), backend="numpy"), 1e-12 * float(np.abs(got).max()))


# ---------------------------------------------------------------------------------------------
# Empty axes and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [((3, 0), -1), ((0, 5), 0), ((0,), 0)])
@pytest.mark.parametrize("norm", [None, "ortho", "forward"])
def test_torch_empty_transform_axis(shape, axis, norm):
    torch = require("torch")
    for fn in (circfft.rdfft, circfft.irdfft):
        x = torch.empty(shape)
        y = fn(x, axis=axis, norm=norm)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert fn(x, axis=axis, norm=norm, out=x) is x
        assert fn(np.empty(shape), axis=axis, norm=norm).shape == shape


def test_spectral_mul_of_empty_rows():
    torch = require("torch")
    for A in (np.empty((2, 0)), torch.empty(2, 0)):
        Z = circfft.spectral_mul(A, A)
        assert tuple(Z.shape) == (2, 0)
        assert circfft.spectral_mul(A, A, conj=True, out=A) is A


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "complex64", "uint8"])
def test_torch_non_real_tensors_to_circulant_operators(dtype):
    """A documented TypeError naming the argument, not a compiler error after a long compile."""
    torch = require("torch")
    dt = getattr(torch, dtype)
    w = torch.ones(1, 2, 4).to(dt)
    x = torch.ones(3, 8).to(dt)
    calls = [lambda: circfft.block_circulant_matmul(w, x),
             lambda: circfft.circulant_matmul(w[0, 0], x[:, :4]),
             lambda: circfft.circulant_diagonal_matmul(torch.ones(4).to(dt), w,
                                                       torch.ones(8).to(dt), x),
             lambda: circfft.block_circulant_dense(w),
             lambda: circfft.spectral_mul(x, x)]
    for call in calls:
        with pytest.raises(TypeError, match="must be a float32, float64, float16 or "
                                            "bfloat16 array, got dtype torch"):
            call()


# ---------------------------------------------------------------------------------------------
# Layout helpers and configs: no silent conversions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [8.7, 8.0, "8", True, None, np.float64(8)])
def test_from_rfft_length_must_be_an_integer(n):
    Y = np.fft.rfft(np.arange(8.0))
    with pytest.raises(TypeError, match="n must be a positive integer"):
        circfft.from_rfft(Y, n)
    assert np.array_equal(circfft.from_rfft(Y, np.int64(8)), circfft.from_rfft(Y, 8))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_fourierft_scaling_must_be_finite(value):
    require("torch")
    import circfft.nn as cnn

    with pytest.raises(ValueError, match="finite"):
        cnn.FourierFTConfig(scaling=value)
    with pytest.raises(ValueError, match="finite"):
        cnn.CirculantConfig(scale=value)


def _bert():
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=50)
    return transformers.BertModel(cfg).eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, state):
    now = model.state_dict()
    return set(now) == set(state) and all(now[k].equal(v) for k, v in state.items())


def test_adapter_name_must_be_a_str(tmp_path):
    import circfft.nn as cnn

    model = _bert()
    cfg = cnn.CirculantConfig(block_size=8, target_modules=["query"])
    state = _state(model)
    with pytest.raises(TypeError, match="adapter_name must be a str, got int"):
        cnn.inject(model, cfg, 5)
    assert _same(model, state)
    cnn.inject(model, cfg)
    with pytest.raises(TypeError, match="adapter_name must be a str"):
        cnn.save_adapter(model, tmp_path / "a", adapter_name=5)
    cnn.save_adapter(model, tmp_path / "a")
    with pytest.raises(TypeError, match="adapter_name must be a str"):
        cnn.load_adapter(_bert(), tmp_path / "a", adapter_name=5)
    layer = model.encoder.layer[0].attention.self.query
    with pytest.raises(TypeError, match="adapter name must be a str"):
        layer.add_adapter(5, cfg)
    with pytest.raises(ValueError, match="without '.'"):
        layer.add_adapter("a.b", cfg)


def _saved_adapter(tmp_path, fmt):
    import circfft.nn as cnn

    src = _bert()
    cnn.inject(src, cnn.CirculantConfig(block_size=8, target_modules=["query"]))
    path = tmp_path / fmt
    cnn.save_adapter(src, path, format=fmt)
    return path


def _rewrite_json(path, name, edit):
    p = path / name
    d = json.loads(p.read_text())
    edit(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 0, 2])
def test_format_version_must_be_a_supported_int(tmp_path, version):
    import circfft.nn as cnn

    path = _saved_adapter(tmp_path, "circfft")
    _rewrite_json(path, "circfft_adapter.json", lambda d: d.update(format_version=version))
    model = _bert()
    state = _state(model)
    with pytest.raises(ValueError, match="format_version"):
        cnn.load_adapter(model, path)
    assert _same(model, state) and not hasattr(model, "circfft_adapters")


def test_deeply_nested_json_is_refused(tmp_path):
    import circfft.nn as cnn

    path = _saved_adapter(tmp_path, "circfft")
    (path / "circfft_adapter.json").write_text("[" * 100000 + "]" * 100000)
    model = _bert()
    state = _state(model)
    with pytest.raises(ValueError, match="cannot read"):
        cnn.load_adapter(model, path)
    assert _same(model, state)


@pytest.mark.parametrize("field,value", [("target_modules", 5), ("target_modules", [1]),
                                         ("exclude_modules", {"a": 1})])
def test_peft_config_field_of_the_wrong_type(tmp_path, field, value):
    import circfft.nn as cnn

    path = _saved_adapter(tmp_path, "peft")
    _rewrite_json(path, "adapter_config.json", lambda d: d.update({field: value}))
    model = _bert()
    state = _state(model)
    with pytest.raises(ValueError, match=f"field '{field}'"):
        cnn.load_adapter(model, path)
    assert _same(model, state)


def test_inplace_transform_bumps_the_version_counter():
    """An in-place transform of a tensor that autograd saved for another operation must make
    that backward raise, as any in-place torch operation does (never a silently wrong
    gradient)."""
    torch = require("torch")
    w = torch.randn(8, requires_grad=True)
    x = torch.randn(8)
    y = (w * x).sum()                       # saves x for backward
    v0 = x._version
    circfft.rdfft(x, out=x)
    assert x._version > v0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
