"""``python -m circfft bench --adapters``: one training step of the demo model timed, per adapter.

The model is the demo's (MiniLM-L6 encoder, mean pooling, linear head; :mod:`.demo`),
float32, with the same target modules (every attention and FFN linear) for every method:

=================  ===========================================================
``lora``           PEFT LoRA, r = 8
``circulant``      circfft ``CirculantAdapter``, block size ``b`` (default 64)
``c3a``            PEFT C3A at the same block size
``fourierft``      circfft ``FourierFTAdapter``, n_frequency = 1000
``peft-fourierft`` PEFT FourierFT, n_frequency = 1000
=================  ===========================================================

(``circulant-diagonal`` and ``frozen`` can be added with ``--methods``.)  One step is forward,
cross-entropy loss, backward and an AdamW step, on the same batch for every method:
``--batch-size`` rows of ``--seq-len`` real tokens (training lexicon entries run together, so
the step has the shape of a sentence batch); ``--seq-len 0`` uses the demo's own batch (one
lexicon entry a row, a few tokens).

- **time**: all methods live in one process; after ``--warmup`` untimed rounds, ``--repeat``
  rounds each time one step of every method in turn (round-robin, so machine noise is shared);
  the median per method is reported.
- **peak memory**: each method in a fresh subprocess.  glibc's mmap threshold is fixed at
  64 KiB (as in ``bench --ops``) so freed buffers leave the resident set; after one warm-up step
  (optimizer state allocated, lazy initialisation done) and ``zero_grad(set_to_none=True)``, the
  RSS is read, the high-water mark is reset through ``/proc/self/clear_refs`` and one step runs:
  the figure is the peak minus that RSS (activations and tensors saved for backward,
  gradients, temporaries) above the model + batch + optimizer-state baseline.  On CUDA:
  ``torch.cuda.max_memory_allocated`` minus the allocated memory at the same point
  (:class:`.measure.PeakMemory`).

Options (after ``--adapters``): ``--methods``, ``--batch-size``, ``--seq-len``, ``--repeat``,
``--warmup``, ``--block-size``, ``--n-frequency``, ``--device``, ``--threads``, ``--no-memory``,
``--no-progress``, ``--json FILE``, ``--quick`` (a short run); ``--help`` lists them.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys

from . import demo
from . import demo_data as data
from .measure import (PeakMemory, Profiles, fix_mmap_threshold, mib, progress_bar, render_table,
                      run_fresh_process, time_call, torch_threads)
from .options import check_outputs

__all__ = ["main", "run", "make_batch", "build", "time_methods", "memory_case",
           "measure_in_fresh_process", "format_table", "TARGETS", "DEFAULT_METHODS", "SETTINGS"]

#: This module's name, also when it runs as ``__main__`` (the per-method subprocesses).
MODULE = "circfft._cli.bench_adapters"
DEFAULT_METHODS = ("lora", "circulant", "c3a", "fourierft", "peft-fourierft")
#: Settings of a full run and of ``--quick``.
SETTINGS = Profiles(full=dict(batch_size=16, seq_len=128, repeat=7, warmup=2),
                    quick=dict(batch_size=8, seq_len=64, repeat=3, warmup=1))

#: (numerator, denominator, time target, memory target): numerator's time must be at most
#: ``time target`` x the denominator's, its peak at most ``memory target`` x (None: no target).
TARGETS = (
    ("circulant", "lora", 1.2, 1.0),
    ("circulant", "c3a", 1 / 1.5, 1.0),
    ("fourierft", "peft-fourierft", 1 / 3, 1.0),
)


def _parse(argv):
    """Options of ``bench --adapters``: the command line after ``bench``, less ``--adapters``.

    Output options are checked here, before anything is measured (``SystemExit(2)``); other bad
    values raise ``ValueError``.
    """
    full, quick = SETTINGS.full, SETTINGS.quick
    p = argparse.ArgumentParser(prog="python -m circfft bench --adapters",
                                description="One training step of the demo model per adapter "
                                            "method: median time (round-robin) and peak memory "
                                            "(fresh process per method).")
    p.add_argument("--methods", nargs="+", choices=list(demo.METHODS),
                   default=list(DEFAULT_METHODS), help=f"default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--quick", action="store_true",
                   help=f"short run: batch {quick['batch_size']} x {quick['seq_len']} tokens, "
                        f"{quick['repeat']} rounds (explicit options still win)")
    p.add_argument("--batch-size", type=int, help=f"rows (default {full['batch_size']})")
    p.add_argument("--seq-len", type=int,
                   help=f"tokens per row (default {full['seq_len']}; 0: the demo's own batch "
                        "of lexicon entries)")
    p.add_argument("--repeat", type=int, help=f"timed rounds (default {full['repeat']})")
    p.add_argument("--warmup", type=int, help=f"untimed rounds first (default {full['warmup']})")
    p.add_argument("--block-size", type=int, default=64, help="CirculantAdapter / C3A block")
    p.add_argument("--n-frequency", type=int, default=1000, help="FourierFT entries per layer")
    p.add_argument("--device", nargs="+", metavar="DEV",
                   help="cpu and/or cuda[:k] (default: cpu, plus cuda when torch sees one)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", metavar="FILE", help="save the rows as JSON")
    ns = p.parse_args(list(argv))
    check_outputs(p, files={"--json": ns.json})
    cfg = SETTINGS.settings(ns.quick, batch_size=ns.batch_size, seq_len=ns.seq_len,
                            repeat=ns.repeat, warmup=ns.warmup)
    cfg.update(methods=ns.methods, block_size=ns.block_size, n_frequency=ns.n_frequency,
               devices=ns.device, threads=ns.threads, memory=not ns.no_memory, json=ns.json,
               progress=not ns.no_progress)
    for key in ("batch_size", "repeat", "block_size", "n_frequency"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, "
                             f"got {cfg[key]}")
    if cfg["threads"] is not None and cfg["threads"] < 1:
        raise ValueError(f"--threads must be a positive integer, got {cfg['threads']}")
    if cfg["seq_len"] < 0 or 0 < cfg["seq_len"] < 3:
        raise ValueError(f"--seq-len must be 0 (demo batch) or at least 3, got {cfg['seq_len']}")
    if cfg["warmup"] < 0:
        raise ValueError(f"--warmup must be >= 0, got {cfg['warmup']}")
    return cfg


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


def build(name: str, cfg: dict, seed: int = 0):
    """``(model, optimizer, trainable)`` of method ``name`` on ``cfg["device"]``."""
    model = data.load_model(seed=seed)
    model = demo.build_method(name, model, list(data.DEFAULT_TARGET_MODULES),
                              cfg["block_size"], cfg["n_frequency"], seed=seed)
    model = model.to(cfg["device"]).eval()      # no dropout, as in the demo
    trainable, _ = demo.parameter_counts(name, model)
    return model, demo.make_optimizer(name, model), trainable


def time_methods(cfg, batch, progress=None) -> dict:
    """Median step time per method, round-robin in this process."""
    built = {}
    for name in cfg["methods"]:
        model, opt, trainable = build(name, cfg)
        built[name] = (model, opt, trainable)
    times = {name: [] for name in built}
    rounds = cfg["warmup"] + cfg["repeat"]
    for r in range(rounds):
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
    batch = make_batch(data.load_tokenizer(), cfg["batch_size"], cfg["seq_len"], device)
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
def format_table(rows: dict) -> str:
    """Per-method table, then the target ratios with their verdicts."""
    label = {name: method.label for name, method in demo.METHODS.items()}
    lines = []
    for name, r in rows.items():
        if "error" in r:
            lines.append([label[name], f"failed: {r['error']}", "", ""])
            continue
        lines.append([label[name], f"{r['trainable']:,}", f"{1000 * r['time_s']:.1f}",
                      mib(r.get("peak_bytes"))])
    ratios = []
    for num, den, t_target, m_target in TARGETS:
        a, b = rows.get(num), rows.get(den)
        if not a or not b or "error" in a or "error" in b:
            continue
        tr = a["time_s"] / b["time_s"]
        verdict = ["time ok" if tr <= t_target else "time MISSED"]
        pa, pb = a.get("peak_bytes"), b.get("peak_bytes")
        mr = pa / pb if (pa is not None and pb) else None
        if mr is not None:
            verdict.append("memory ok" if mr <= m_target else "memory MISSED")
        ratios.append([f"{label[num]} / {label[den]}", f"{tr:.3f}", f"<= {t_target:.3f}",
                       "n/a" if mr is None else f"{mr:.3f}", f"<= {m_target:g}",
                       ", ".join(verdict)])
    return "\n\n".join([
        render_table(["method", "trainable params", "step time (ms)",
                      "peak above baseline (MiB)"], lines, markdown=True),
        render_table(["ratio", "time", "time target", "peak memory", "memory target", "verdict"],
                     ratios, markdown=True)])


def main(argv=()) -> int:
    """Run the step benchmark with command-line options ``argv``; return the exit status."""
    try:
        cfg = _parse(argv)
    except ValueError as exc:
        print(f"bench --adapters: {exc}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("bench --adapters needs torch and the demo extra: pip install 'circfft[demo]'",
              file=sys.stderr)
        return 2
    if not cfg["devices"]:
        cfg["devices"] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in cfg["devices"]:
        reason = demo.check_device(device)
        if reason:
            print(f"bench --adapters: {reason}", file=sys.stderr)
            return 2
    with torch_threads(cfg["threads"]):
        return run(cfg)


def run(cfg) -> int:
    """Run the benchmark on every device of ``cfg`` (as :func:`main` builds it); print tables."""
    import torch

    cfg["threads"] = torch.get_num_threads()
    per_device, shape = {}, None
    for device in cfg["devices"]:
        per_device[device], shape = _run_device(dict(cfg, device=device))
        print()
    if cfg["json"]:
        with open(cfg["json"], "w") as fh:
            json.dump(dict(config=cfg, batch_shape=shape, devices=per_device,
                           rows=per_device[cfg["devices"][0]]), fh, indent=1)
    return 0


def _run_device(cfg):
    """Time (and measure) every method on ``cfg["device"]``; print its tables."""
    batch = make_batch(data.load_tokenizer(), cfg["batch_size"], cfg["seq_len"], cfg["device"])
    shape = tuple(batch[0].shape)
    print(f"one training step (forward, loss, backward, AdamW step) of the demo model, float32, "
          f"{cfg['device']}, {cfg['threads']} threads; batch {shape[0]} x {shape[1]} tokens; "
          f"block size {cfg['block_size']}, n_frequency {cfg['n_frequency']}; "
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
    print(format_table(rows))
    print("\npeak above baseline: " + (
        "torch.cuda.max_memory_allocated during one step minus the allocation before it"
        if cfg["device"].startswith("cuda") else
        "peak RSS of one step (fresh process per method, /proc/self/clear_refs) minus the RSS "
        "before it (model, batch and optimizer state)"))
    return rows, shape


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(memory_case(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        sys.exit(main(sys.argv[1:]))
