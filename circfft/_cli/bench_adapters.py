"""``python -m circfft bench --adapters``: one training step timed, per adapter method.

Models (``--model``): ``demo``, the demo's classifier (pretrained MiniLM-L6 encoder, mean
pooling, linear head; :mod:`.demo`) with the demo's target modules (every attention and FFN
linear); ``bert-384`` and ``bert-1024``, BERT encoders of those shapes built from a
``BertConfig`` with random weights, the same pooling and head, query and value adapted
(:mod:`.bench_models`).  float32 throughout.  Default: ``demo`` on the CPU, both BERT shapes
on CUDA.  Methods (``--methods``; default ``DEFAULT_METHODS`` on the demo model,
``BERT_METHODS`` on the BERT shapes):

======================  ===========================================================
``frozen``              no adapter (head only)
``gate``                a trainable scalar gate per adapted layer: the lower bound
``lora``                PEFT LoRA, r = 8
``c3a``                 PEFT C3A at block size ``b`` (default 64)
``peft-fourierft``      PEFT FourierFT, n_frequency = 1000
``circulant``           circfft ``CirculantAdapter``, block size ``b``
``fourierft``           circfft ``FourierFTAdapter``, n_frequency = 1000
``circulant-diagonal``  circfft ``CirculantDiagonalAdapter``
======================  ===========================================================

One step is forward, cross-entropy loss, backward and an AdamW step, on the same batch for
every method: ``--batch-size`` rows of ``--seq-len`` tokens (defaults per model; the demo
model's rows are training lexicon entries run together, ``--seq-len 0`` its own batch; the
BERT shapes' are random token ids).

- **time**: all methods live in one process; after ``--warmup`` untimed rounds, ``--repeat``
  rounds each time one step of every method in turn (round-robin, so machine noise is shared;
  the device is synchronised before and after each step); the median per method is reported.
- **peak memory**: each method in a fresh subprocess.  On the CPU glibc's mmap threshold is
  fixed at 64 KiB (as in ``bench --ops``) so freed buffers leave the resident set; after one
  warm-up step (optimizer state allocated, lazy initialisation done) and
  ``zero_grad(set_to_none=True)``, the RSS is read, the high-water mark is reset through
  ``/proc/self/clear_refs`` and one step runs: the figure is the peak minus that RSS
  (activations and tensors saved for backward, gradients, temporaries) above the model +
  batch + optimizer-state baseline.  On CUDA: ``torch.cuda.max_memory_allocated`` minus the
  allocated memory at the same point (:class:`.measure.PeakMemory`).

The ratio table checks the targets of the model (``TARGETS`` on the demo model,
``BERT_TARGETS`` on the BERT shapes).  Options: ``--help``.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys

from . import bench_models as models
from . import demo
from . import demo_data as data
from .measure import (PeakMemory, Profiles, default_device, device_description,
                      fix_mmap_threshold, mib, progress_bar, ratio, render_table,
                      run_fresh_process, time_call, torch_threads, verdict)
from .options import check_outputs

__all__ = ["main", "run", "make_batch", "build", "time_methods", "memory_case",
           "measure_in_fresh_process", "format_table", "targets_for", "TARGETS",
           "BERT_TARGETS", "DEFAULT_METHODS", "BERT_METHODS", "METHODS", "SETTINGS"]

#: This module's name, also when it runs as ``__main__`` (the per-method subprocesses).
MODULE = "circfft._cli.bench_adapters"
#: Every method: the demo's and the gate.
METHODS = ("frozen", "gate", "lora", "c3a", "peft-fourierft", "circulant", "fourierft",
           "circulant-diagonal")
DEFAULT_METHODS = ("lora", "circulant", "c3a", "fourierft", "peft-fourierft")
BERT_METHODS = METHODS
#: Settings of a full run and of ``--quick`` (batch: the demo model's; BERT shapes have theirs).
SETTINGS = Profiles(full=dict(batch_size=16, seq_len=128, repeat=7, warmup=2),
                    quick=dict(batch_size=8, seq_len=64, repeat=3, warmup=1))

#: (numerator, denominator, time target, memory target): numerator's time must be at most
#: ``time target`` x the denominator's, its peak at most ``memory target`` x (None: no target).
TARGETS = (
    ("circulant", "lora", 1.2, 1.0),
    ("circulant", "c3a", 1 / 1.5, 1.0),
    ("fourierft", "peft-fourierft", 1 / 3, 1.0),
)
#: The targets on the BERT shapes; each circfft adapter's peak at most its PEFT counterpart's.
BERT_TARGETS = (
    ("circulant", "c3a", 0.7, 1.0),
    ("circulant", "lora", 1.1, None),
    ("fourierft", "peft-fourierft", 1.0, 1.0),
    ("circulant-diagonal", "lora", 1.5, 1.0),
)


def targets_for(model: str):
    """The target ratios checked on ``model``."""
    return BERT_TARGETS if models.is_bert(model) else TARGETS


def _parse(argv):
    """Options of ``bench --adapters``: the command line after ``bench``, less ``--adapters``.

    Output options are checked here, before anything is measured (``SystemExit(2)``); other bad
    values raise ``ValueError``.
    """
    full, quick = SETTINGS.full, SETTINGS.quick
    shapes = {name: f"{s.batch_size} x {s.seq_len}" for name, s in models.MODELS.items() if s}
    p = argparse.ArgumentParser(prog="python -m circfft bench --adapters",
                                description="One training step per adapter method: median "
                                            "time (round-robin) and peak memory (fresh "
                                            "process per method).")
    p.add_argument("--model", nargs="+", choices=list(models.MODELS), metavar="MODEL",
                   help="demo (MiniLM-L6), bert-384, bert-1024 (random BertConfig weights); "
                        "default: demo on cpu, both bert shapes on cuda")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="M",
                   help=f"from {' '.join(METHODS)} (default: {' '.join(DEFAULT_METHODS)} on "
                        "the demo model, all on the bert shapes)")
    p.add_argument("--quick", action="store_true",
                   help=f"short run: {quick['repeat']} rounds, demo batch "
                        f"{quick['batch_size']} x {quick['seq_len']} tokens (explicit options "
                        "still win)")
    p.add_argument("--batch-size", type=int,
                   help=f"rows (default: demo {full['batch_size']}; "
                        + "; ".join(f"{k} {v.split(' x ')[0]}" for k, v in shapes.items()) + ")")
    p.add_argument("--seq-len", type=int,
                   help=f"tokens per row (default: demo {full['seq_len']}; "
                        + "; ".join(f"{k} {v.split(' x ')[1]}" for k, v in shapes.items())
                        + "; 0: the demo's own batch of lexicon entries)")
    p.add_argument("--repeat", type=int, help=f"timed rounds (default {full['repeat']})")
    p.add_argument("--warmup", type=int, help=f"untimed rounds first (default {full['warmup']})")
    p.add_argument("--block-size", type=int, default=64, help="CirculantAdapter / C3A block")
    p.add_argument("--n-frequency", type=int, default=1000, help="FourierFT entries per layer")
    p.add_argument("--device", nargs="+", metavar="DEV",
                   help="cpu and/or cuda[:k] (default: cuda when torch sees one, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", metavar="FILE", help="save the rows as JSON")
    ns = p.parse_args(list(argv))
    check_outputs(p, files={"--json": ns.json})
    cfg = SETTINGS.settings(ns.quick, repeat=ns.repeat, warmup=ns.warmup)
    cfg.update(models=ns.model, methods=ns.methods, batch_size=ns.batch_size,
               seq_len=ns.seq_len, quick=ns.quick, block_size=ns.block_size,
               n_frequency=ns.n_frequency, devices=ns.device, threads=ns.threads,
               memory=not ns.no_memory, json=ns.json, progress=not ns.no_progress)
    for key in ("repeat", "block_size", "n_frequency"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, "
                             f"got {cfg[key]}")
    for key in ("batch_size", "threads"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, "
                             f"got {cfg[key]}")
    seq_len = cfg["seq_len"]
    if seq_len is not None and (seq_len < 0 or 0 < seq_len < 3):
        raise ValueError(f"--seq-len must be 0 (demo batch) or at least 3, got {seq_len}")
    if seq_len == 0 and any(models.is_bert(m) for m in cfg["models"] or ()):
        raise ValueError("--seq-len 0 (the demo's own batch) works on the demo model only")
    if cfg["warmup"] < 0:
        raise ValueError(f"--warmup must be >= 0, got {cfg['warmup']}")
    return cfg


def run_settings(cfg: dict, device: str, model: str) -> dict:
    """The settings of one (device, model) run: its methods and batch shape filled in."""
    shape = models.MODELS[model]
    profile = SETTINGS.quick if cfg.get("quick") else SETTINGS.full
    default_batch = (shape.batch_size, shape.seq_len) if shape else \
        (profile["batch_size"], profile["seq_len"])
    methods = cfg.get("methods") or (BERT_METHODS if shape else DEFAULT_METHODS)
    return dict(cfg, device=device, model=model, methods=list(methods),
                batch_size=cfg.get("batch_size") or default_batch[0],
                seq_len=default_batch[1] if cfg.get("seq_len") is None else cfg["seq_len"])


# ---------------------------------------------------------------------------------------------
# Model, batch and step
# ---------------------------------------------------------------------------------------------
def make_batch(tokenizer, batch_size: int, seq_len: int, device="cpu"):
    """``(input_ids, attention_mask, labels)``: the same batch for every method.

    ``seq_len > 0``: training lexicon entries, tokenized without special tokens and run
    together, cut into rows of ``seq_len - 2`` tokens framed by [CLS] ... [SEP]; labels are the
    first entry's of each row.  ``seq_len == 0``: the demo's first batch (seed 0).
    """
    import torch

    train, _ = data.split_lexicon(data.load_lexicon())
    if seq_len == 0:
        return data.Batches(train, tokenizer, batch_size, seed=0, device=device).next()
    body = seq_len - 2
    stream, labels, i = [], [], 0
    for row in range(batch_size):
        ids = []
        labels.append(train[i % len(train)].label)
        while len(ids) < body:
            ids += tokenizer(train[i % len(train)].text, add_special_tokens=False)["input_ids"]
            i += 1
        stream.append([tokenizer.cls_token_id, *ids[:body], tokenizer.sep_token_id])
    input_ids = torch.tensor(stream, device=device)
    return input_ids, torch.ones_like(input_ids), torch.tensor(labels, device=device)


def batch_for(cfg: dict):
    """The batch of the run ``cfg`` (:func:`run_settings`): lexicon text on the demo model,
    random tokens on a BERT shape."""
    if models.is_bert(cfg["model"]):
        return models.make_random_batch(cfg["model"], cfg["batch_size"], cfg["seq_len"],
                                        cfg["device"])
    return make_batch(data.load_tokenizer(), cfg["batch_size"], cfg["seq_len"], cfg["device"])


def build(name: str, cfg: dict, seed: int = 0):
    """``(model, optimizer, trainable)`` of method ``name`` on ``cfg["device"]``."""
    model = models.load(cfg.get("model", "demo"), seed=seed)
    model = models.build_method(name, model, models.target_modules(cfg.get("model", "demo")),
                                cfg["block_size"], cfg["n_frequency"], seed=seed)
    model = model.to(cfg["device"]).eval()      # no dropout, as in the demo
    return model, models.make_optimizer(name, model), models.trainable_count(name, model)


def time_methods(cfg, batch, progress=None) -> dict:
    """Median step time per method, round-robin in this process."""
    built = {name: build(name, cfg) for name in cfg["methods"]}
    times = {name: [] for name in built}
    for r in range(cfg["warmup"] + cfg["repeat"]):
        for name, (model, opt, _) in built.items():
            step = functools.partial(demo.train_step, model, opt, batch)
            _, seconds = time_call(step, cfg["device"])
            if r >= cfg["warmup"]:
                times[name].append(seconds)
            if progress is not None:
                progress.update(1)
    return {name: dict(time_s=statistics.median(t), times_s=t, trainable=built[name][2])
            for name, t in times.items()}


def memory_case(name: str, cfg: dict) -> dict:
    """Peak memory of one step of ``name`` above model + batch + optimizer state (this process)."""
    device = cfg["device"]
    if not device.startswith("cuda"):
        fix_mmap_threshold(65536)
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    cfg = dict(cfg, model=cfg.get("model", "demo"))
    batch = batch_for(cfg)
    model, opt, trainable = build(name, cfg)
    demo.train_step(model, opt, batch)          # warm-up: optimizer state, lazy init, caches
    probe = PeakMemory.for_device(device)
    peak = probe.measure(functools.partial(demo.train_step, model, opt, batch))
    return dict(method=name, peak_bytes=peak if probe.exact else None, exact_peak=probe.exact,
                trainable=trainable)


def measure_in_fresh_process(name: str, cfg: dict) -> dict:
    """:func:`memory_case` of ``name`` run in a fresh subprocess (its row, or one with "error")."""
    answer = run_fresh_process(MODULE, "--case", name, json.dumps(cfg))
    if "error" in answer:
        return dict(method=name, peak_bytes=None, error=answer["error"])
    return answer


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def format_table(rows: dict, targets=TARGETS) -> str:
    """Per-method table, then the target ratios with their verdicts (Markdown)."""
    gate = rows.get("gate")
    lines = []
    for name, r in rows.items():
        if "error" in r:
            lines.append([models.label(name), f"failed: {r['error']}", "", "", ""])
            continue
        over_gate = ratio(r["time_s"], gate["time_s"]) if gate and "error" not in gate else None
        lines.append([models.label(name), f"{r['trainable']:,}", f"{1000 * r['time_s']:.1f}",
                      "-" if over_gate is None else f"{over_gate:.2f}",
                      mib(r.get("peak_bytes"))])
    checks = []
    for num, den, t_target, m_target in targets:
        a, b = rows.get(num), rows.get(den)
        if not a or not b or "error" in a or "error" in b:
            continue
        tr = ratio(a["time_s"], b["time_s"])
        mr = ratio(a.get("peak_bytes"), b.get("peak_bytes"))
        found = [verdict("time", tr, t_target), verdict("memory", mr, m_target)]
        checks.append([f"{models.label(num)} / {models.label(den)}", f"{tr:.3f}",
                       f"<= {t_target:.3f}", "n/a" if mr is None else f"{mr:.3f}",
                       "-" if m_target is None else f"<= {m_target:g}",
                       ", ".join(v for v in found if v)])
    return "\n\n".join([
        render_table(["method", "trainable params", "step time (ms)", "time / gate",
                      "peak above baseline (MiB)"], lines, markdown=True),
        render_table(["ratio", "time", "time target", "peak memory", "memory target", "verdict"],
                     checks, markdown=True)])


def main(argv=()) -> int:
    """Run the step benchmark with command-line options ``argv``; return the exit status."""
    try:
        cfg = _parse(argv)
    except ValueError as exc:
        print(f"bench --adapters: {exc}", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench --adapters needs torch and the demo extra: pip install 'circfft[demo]'",
              file=sys.stderr)
        return 2
    cfg["devices"] = cfg["devices"] or [default_device()]
    for device in cfg["devices"]:
        reason = demo.check_device(device)
        if reason:
            print(f"bench --adapters: {reason}", file=sys.stderr)
            return 2
    with torch_threads(cfg["threads"]):
        return run(cfg)


def run(cfg) -> int:
    """Run the benchmark on every device and model of ``cfg`` (as :func:`main` builds it);
    print the tables; returns the exit status."""
    import torch

    cfg["threads"] = torch.get_num_threads()
    runs = []
    for device in cfg["devices"]:
        for model in cfg.get("models") or (
                ["bert-384", "bert-1024"] if device.startswith("cuda") else ["demo"]):
            settings = run_settings(cfg, device, model)
            rows, shape = _run_one(settings)
            runs.append(dict(device=device, model=model, batch_shape=shape, rows=rows))
            print()
    if cfg["json"]:
        with open(cfg["json"], "w") as fh:
            json.dump(dict(config=cfg, runs=runs, batch_shape=runs[0]["batch_shape"],
                           rows=runs[0]["rows"]), fh, indent=1)
    failed = any("error" in r for run in runs for r in run["rows"].values())
    return 1 if failed else 0


def _run_one(cfg):
    """Time (and measure) every method of the run ``cfg``; print its tables."""
    batch = batch_for(cfg)
    shape = tuple(batch[0].shape)
    what = ("the demo model (MiniLM-L6)" if not models.is_bert(cfg["model"]) else
            f"{cfg['model']} ({_describe(models.MODELS[cfg['model']])}, random weights)")
    print(f"device: {device_description(cfg['device'])}")
    if cfg["device"].startswith("cuda"):
        from .info import cuda_tensor_route

        print(f"circfft on CUDA tensors: {cuda_tensor_route()}")
    print(f"one training step (forward, loss, backward, AdamW step) of {what}, float32, "
          f"targets {models.target_modules(cfg['model'])}; batch {shape[0]} x {shape[1]} "
          f"tokens; block size {cfg['block_size']}, n_frequency {cfg['n_frequency']}; "
          f"median of {cfg['repeat']} round-robin rounds after {cfg['warmup']} warm-up",
          flush=True)
    bar = progress_bar(len(cfg["methods"]) * (cfg["repeat"] + cfg["warmup"]),
                       enabled=cfg["progress"], desc="steps", leave=False)
    rows = time_methods(cfg, batch, bar)
    bar.close()
    if cfg["memory"]:
        for name in cfg["methods"]:
            mem = measure_in_fresh_process(name, cfg)
            rows[name]["peak_bytes"] = mem.get("peak_bytes")
            if "error" in mem:
                rows[name]["memory_error"] = mem["error"]
                print(f"  {name}: memory probe failed: {mem['error']}", file=sys.stderr)
    print()
    print(format_table(rows, targets_for(cfg["model"])))
    print("\ntime / gate: step time over the scalar gate's (the cheapest adapter of those "
          "layers); peak above baseline: " + (
              "torch.cuda.max_memory_allocated during one step minus the allocation before it"
              if cfg["device"].startswith("cuda") else
              "peak RSS of one step (fresh process per method, /proc/self/clear_refs) minus "
              "the RSS before it (model, batch and optimizer state)"))
    return rows, shape


def _describe(shape) -> str:
    return (f"hidden {shape.hidden}, {shape.layers} layers, {shape.heads} heads, "
            f"intermediate {shape.intermediate}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(memory_case(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        sys.exit(main(sys.argv[1:]))
