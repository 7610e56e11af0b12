"""How fast self-edits are evaluated, four ways, on the embedded model or a real architecture, in one run.

    .venv/bin/python benchmarks/inner_loop_speed.py                      # short: ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/inner_loop_speed.py --self-edits 24 --reference 3 --epochs 3
    python benchmarks/inner_loop_speed.py --arch llama-3.2-1b --device cuda --recipe project --careful 8

The same self-edits (sampled from the base model on built-in passages, or read from a run), the same
seeds and the same LoRA recipe go through:

  (a) reference-style: a fresh PEFT wrap per self-edit trained by the Hugging Face `Trainer` at batch
      size 1 with every sequence padded to --pad-to tokens, and the unchanged base model re-evaluated
      for every self-edit; run on the first --reference self-edits only (it is slow) and rated per
      self-edit;
  (b) the project's one-at-a-time path (inner_loop.batched=false): dynamic padding, no loss or
      logits on padding, pre-update scores once per passage;
  (c) the batched path (the default): K adapters trained in shared packed batches and their
      questions answered in shared generation batches;
  (d) the careful user's path: what one would write with the usual libraries, a fresh PEFT adapter
      and the Hugging Face `Trainer` per self-edit at the recipe's batch size, with dynamic padding
      (a padding collator) and length-grouped batches, the pre-update score once per passage;
      run on the first --careful self-edits.

--arch NAME takes a configuration from benchmarks/archs/NAME.json (Llama-3.2-1B, Qwen2.5-3B,
Qwen2.5-7B, or a tiny one for tests) and builds the model with random weights (no download): speed
and memory do not depend on the weights. Its self-edits are sampled by the embedded model first,
and its tokenizer is the embedded one (token ids beyond it are never fed in). On CUDA the run also
reports generation tokens/s of the model and the largest K whose batch fits in the GPU's memory.

It prints self-edit evaluations per minute and the ratios between the paths; training throughput in
tokens/s and in FLOP/s (4·N per real token: forward plus input gradients of a frozen base model) as a
share of a matmul peak measured at the start of the run (model FLOP utilisation); the peak memory of each path; and whether
the three paths gave the same rewards (same seeds, same adapter initialisation, same data order).
Results also go to --out as JSON. --profile adds where the time of one batched evaluation goes.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import PeakMemory, arch_model, machine, matmul_peak, matmul_size
from seal.core.bank_size import widest_batch
from seal.core.config import load_config
from seal.core.examples import Example
from seal.core.generation import resolve_precision
from seal.core.models import load_configured
from seal.core.restem import derive_seed, sample_self_edits
from seal.core.runs import Run
from seal.core.training import TrainStats, epoch_batches, fresh_adapter
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.self_edit import training_set


def generation_speed(lm, new_tokens: int = 64, batch: int = 8) -> float:
    """Tokens/s of greedy generation: `batch` prompts, `new_tokens` each (end tokens ignored)."""
    ids = torch.full((batch, 32), lm.tokenizer.bos_token_id or 1, dtype=torch.long, device=lm.device)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=lm.tokenizer.pad_token_id)
    lm.model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                      pad_token_id=lm.tokenizer.pad_token_id)  # warm-up
    sync(lm)
    start = time.perf_counter()
    with torch.no_grad():
        lm.model.generate(ids, **kwargs)
    sync(lm)
    return batch * new_tokens / (time.perf_counter() - start)


def largest_k(domain, lm, pairs, seeds, ks=(8, 16, 32, 64, 128, 256)) -> int | None:
    """The largest K in `ks` whose batch (the self-edits repeated) trains and answers without running
    out of GPU memory; None on a CPU, where memory is not the limit that matters (see --k-sweep)."""
    if lm.device.type != "cuda":
        return None
    pre = {p.id: domain.pre_update(lm, p) for p, _ in pairs}
    fits = None
    for k in ks:
        items = [(p, s, seed, pre[p.id]) for (p, s), seed in zip((pairs * k)[:k], (seeds * k)[:k])]
        try:
            domain.evaluate_batch(lm, items)
            fits = k
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return fits


def sync(lm) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def self_edits(lm, config, domain, n: int, from_run: str | None, seed: int):
    """n (passage, self-edit) pairs: 3 sampled self-edits per built-in passage, or a run's samples."""
    passages = {p.id: p for p in load_builtin()}
    if from_run:
        pairs = [(passages[r["context_id"]], s) for r in Run.resume(from_run).records("samples")
                 for s in r["self_edits"] if r.get("context_id") in passages]
        if len(pairs) < n:
            raise SystemExit(f"{from_run} has {len(pairs)} built-in-corpus self-edits, fewer than --self-edits {n}")
        return pairs[:n]
    chosen = list(passages.values())[:math.ceil(n / 3)]
    samples = sample_self_edits(lm, [domain.self_edit_prompt(p) for p in chosen], 3, config, seed)
    return [(p, s) for p, sample in zip(chosen, samples) for s in sample["self_edits"]][:n]


def reference_style(lm, domain: KnowledgeDomain, passage, self_edit: str, seed: int, pad_to: int, workdir: str):
    """One self-edit as the reference implementation evaluates it: base model scored again, a fresh
    PEFT wrap, Trainer at batch size 1 over sequences padded to a fixed length, then the questions."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    cfg = domain.config.inner_loop
    pre = domain.pre_update(lm, passage)  # re-evaluated for every self-edit, as the reference does
    update = domain.prepare(lm, passage, self_edit, seed, pre)
    if update.examples is None:
        return update.record, 0.0, 0, 0
    base = update.record
    examples = [Example(e.input_ids[:pad_to], e.labels[:pad_to]) for e in update.examples]
    one = cfg.model_copy(update=dict(batch_size=1))
    order = [i for batch in epoch_batches(len(examples), one, seed) for i in batch]  # the same order as (b), (c)
    pad = lm.tokenizer.pad_token_id
    rows = [dict(input_ids=torch.tensor(e.input_ids + [pad] * (pad_to - len(e.input_ids))),
                 attention_mask=torch.tensor([1] * len(e.input_ids) + [0] * (pad_to - len(e.input_ids))),
                 labels=torch.tensor(e.labels + [-100] * (pad_to - len(e.labels)))) for e in (examples[i] for i in order)]
    args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=1, num_train_epochs=1, learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=0.0,
        train_sampling_strategy="sequential", save_strategy="no", logging_strategy="no", report_to=[],
        disable_tqdm=True, use_cpu=lm.device.type == "cpu", seed=seed, dataloader_num_workers=0,
        bf16=domain.precision(lm) == "bf16")
    with fresh_adapter(lm, one, seed) as wrapped:
        start = time.perf_counter()
        Trainer(model=wrapped, args=args, train_dataset=rows, data_collator=default_data_collator).train()
        seconds = time.perf_counter() - start
        wrapped.eval()
        scored = domain.score(lm, passage)
    real = sum(len(examples[i].input_ids) for i in order)
    stats = TrainStats(steps=len(rows), tokens=real, first_loss=math.nan, last_loss=math.nan, seconds=seconds)
    return domain.finish(base, stats, scored, pre), seconds, real, len(rows) * pad_to


def careful_user(lm, domain: KnowledgeDomain, passage, self_edit: str, seed: int, pre, workdir: str):
    """One self-edit as a careful user would evaluate it with the usual libraries: a fresh PEFT adapter
    and the Hugging Face `Trainer` at the recipe's batch size, dynamic padding, length-grouped batches,
    the passage's pre-update score computed once (passed in)."""
    import copy

    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    cfg = domain.config.inner_loop
    update = domain.prepare(lm, passage, self_edit, seed, pre)
    if update.examples is None:
        return update.record, 0.0, 0
    base, examples = update.record, update.examples
    rows = [dict(input_ids=e.input_ids, attention_mask=[1] * len(e.input_ids), labels=e.labels) for e in examples]
    tokenizer = copy.copy(lm.tokenizer)
    tokenizer.padding_side = "right"  # training pads on the right; generation keeps the left
    args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, lr_scheduler_type="linear", warmup_steps=0,
        max_grad_norm=cfg.max_grad_norm or 0.0, train_sampling_strategy="group_by_length", save_strategy="no",
        logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=lm.device.type == "cpu", seed=seed,
        dataloader_num_workers=0, bf16=domain.precision(lm) == "bf16", remove_unused_columns=False)
    with fresh_adapter(lm, cfg, seed) as wrapped:
        start = time.perf_counter()
        Trainer(model=wrapped, args=args, train_dataset=rows,
                data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)).train()
        sync(lm)
        seconds = time.perf_counter() - start
        wrapped.eval()
        scored = domain.score(lm, passage)
    real = sum(len(e.input_ids) for e in examples) * cfg.epochs
    stats = TrainStats(steps=0, tokens=real, first_loss=math.nan, last_loss=math.nan, seconds=seconds)
    return domain.finish(base, stats, scored, pre), seconds, real


def run_path(name: str, fn) -> dict:
    with PeakMemory() as mem:
        start = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - start
    out.update(name=name, wall=wall, peak_rss=mem.peak, rss_growth=mem.peak - mem.start)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-edits", type=int, default=8, help="self-edits evaluated by (b) and (c)")
    parser.add_argument("--reference", type=int, default=1, help="of those, how many (a) evaluates (it is slow)")
    parser.add_argument("--k", type=int, default=None, help="adapters per batch in (c); default: the device's throughput K, within memory")
    parser.add_argument("--recipe", choices=["reference", "project"], default="reference",
                        help="reference: the paper's inner loop (q,v r32, batch 1); "
                             "project: this project's default (all linear r16, batch 4)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (10 / 5) to shorten a run")
    parser.add_argument("--pad-to", type=int, default=2048, help="(a) pads every training sequence to this length")
    parser.add_argument("--config", default=None, help="a configuration file for everything but the inner loop")
    parser.add_argument("--from-run", default=None, help="take the self-edits from this run's samples")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=2e-3, help="largest reward difference counted as equal")
    parser.add_argument("--profile", action="store_true", help="also profile one batched evaluation")
    parser.add_argument("--arch", default=None, help="a random-weight model of this architecture (benchmarks/archs/NAME.json)")
    parser.add_argument("--device", default=None, help="model.device, e.g. cuda (default: the configuration's)")
    parser.add_argument("--dtype", default=None, help="model.dtype (default: the configuration's, auto)")
    parser.add_argument("--careful", type=int, default=None, help="self-edits run by (d), the careful user's path (default: all; 0: skip)")
    parser.add_argument("--k-sweep", default=None, help="only (c), once per K in this comma-separated list (ascending): "
                        "evaluations/min and peak memory against K, e.g. 1,2,4,8,12")
    parser.add_argument("--set", action="append", default=[], help="a configuration override, e.g. inner_loop.tokens_per_forward=2048")
    parser.add_argument("--out", default="benchmarks/results/inner_loop_speed.json")
    return parser.parse_args()


@dataclass
class Bench:
    """What every path shares: the model, the domain, the self-edits with their seeds, K and the peak."""

    config: Any
    lm: Any
    domain: KnowledgeDomain
    pairs: list
    seeds: list[int]
    k: int
    precision: str
    n_params: int
    peak: float  # FLOP/s of a large matmul on this device, now

    @property
    def cfg(self):
        return self.config.inner_loop


def setup(args) -> Bench:
    """The configuration (the demo's self-edit and answer lengths; the inner loop from --recipe), the
    model (or a random-weight --arch), the self-edits, and the matmul peak."""
    overrides = ["reward.metric=loglik", "self_edit.max_new_tokens=96", "answer.max_new_tokens=16"]
    overrides += ["inner_loop.preset=reference"] if args.recipe == "reference" else ["inner_loop.epochs=5", "inner_loop.batch_size=4"]
    overrides += [f"inner_loop.epochs={args.epochs}"] if args.epochs else []
    overrides += args.set
    overrides += [f"model.device={args.device}"] if args.device else []
    overrides += [f"model.dtype={args.dtype}"] if args.dtype else []
    config = load_config(args.config, overrides)
    cfg = config.inner_loop
    lm = load_configured(config.model)
    domain = KnowledgeDomain(config)
    pairs = self_edits(lm, config, domain, args.self_edits, args.from_run, args.seed)
    if args.arch:  # the self-edits came from the embedded model; the paths run on the architecture
        lm = arch_model(args.arch, lm.tokenizer, config.model.dtype, config.model.device)
    precision = resolve_precision(config.model.precision, lm.device)
    dtype = torch.bfloat16 if precision == "bf16" or lm.dtype == "bf16" else torch.float32
    n_params = sum(p.numel() for p in lm.model.parameters())
    print(f"device {lm.device}, threads {torch.get_num_threads()}, weights {lm.dtype}, autocast {precision}, "
          f"model {args.arch or config.model.name}: {n_params / 1e6:.1f}M parameters, "
          f"recipe {args.recipe}: rank {cfg.rank} on {','.join(cfg.target_modules)}, {cfg.epochs} epochs, "
          f"batch {cfg.batch_size}, lr {cfg.lr}", flush=True)
    peak = matmul_peak(dtype, lm.device)
    n = matmul_size(lm.device)
    print(f"matmul peak ({dtype}, {n}x{n}): {peak / 1e9:.0f} GFLOP/s", flush=True)
    seeds = [derive_seed(args.seed, "bench", i) for i in range(len(pairs))]
    k = args.k or widest_batch(lm, cfg, len(pairs))
    lines = [len(training_set(p, s, split_lines=cfg.split_lines, include_passage=cfg.include_passage,
                              max_lines=cfg.max_lines).sequences) for p, s in pairs]
    print(f"{len(pairs)} self-edits on {len({p.id for p, _ in pairs})} passages, {sum(lines) / len(lines):.1f} "
          f"training sequences each; K = {k}", flush=True)
    return Bench(config, lm, domain, pairs, seeds, k, precision, n_params, peak)


def _pre_updates(b: Bench) -> dict:
    pre = {}
    for p, _ in b.pairs:
        if p.id not in pre:
            pre[p.id] = b.domain.pre_update(b.lm, p)
    return pre


def one_at_a_time(b: Bench) -> dict:
    """(b): the project's one-at-a-time path."""
    pre, results, train_s, tokens = _pre_updates(b), [], 0.0, 0
    for (p, s), seed in zip(b.pairs, b.seeds):
        r = b.domain.evaluate(b.lm, p, s, seed, pre[p.id])
        results.append(r)
        train_s += r.get("train", {}).get("seconds", 0.0)
        tokens += r.get("train", {}).get("tokens", 0)
    return dict(results=results, train_seconds=train_s, tokens=tokens, computed_tokens=tokens)


def batched(b: Bench, k: int | None = None) -> dict:
    """(c): K adapters a batch (default: the bench's K)."""
    k = k or b.k
    pre = _pre_updates(b)
    items = [(p, s, seed, pre[p.id]) for (p, s), seed in zip(b.pairs, b.seeds)]
    results = []
    for start in range(0, len(items), k):
        results += b.domain.evaluate_batch(b.lm, items[start:start + k])
    trained = [r["train"] for r in results if r.get("train")]
    return dict(results=results, train_seconds=sum(t["seconds"] for t in trained),
                tokens=sum(t["tokens"] for t in trained), computed_tokens=sum(t["tokens"] for t in trained))


def careful(b: Bench, n: int | None) -> dict:
    """(d): the careful user's PEFT + Trainer path, on the first n self-edits (None: all)."""
    pre, results, train_s, tokens = _pre_updates(b), [], 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for (p, s), seed in list(zip(b.pairs, b.seeds))[:len(b.pairs) if n is None else n]:
            r, secs, real = careful_user(b.lm, b.domain, p, s, seed, pre[p.id], tmp)
            results.append(r)
            train_s, tokens = train_s + secs, tokens + real
    return dict(results=results, train_seconds=train_s, tokens=tokens, computed_tokens=tokens)


def reference(b: Bench, n: int, pad_to: int) -> dict:
    """(a): reference-style, on the first n self-edits."""
    results, train_s, tokens, computed = [], 0.0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for (p, s), seed in list(zip(b.pairs, b.seeds))[:n]:
            r, secs, real, padded = reference_style(b.lm, b.domain, p, s, seed, pad_to, tmp)
            results.append(r)
            train_s, tokens, computed = train_s + secs, tokens + real, computed + padded
    return dict(results=results, train_seconds=train_s, tokens=tokens, computed_tokens=computed)


def warm_up(b: Bench) -> None:
    """Untimed: the first pass through each code path pays one-off allocation costs."""
    warm = KnowledgeDomain(b.config.model_copy(update=dict(inner_loop=b.cfg.model_copy(update=dict(epochs=1)))))
    p, s = b.pairs[0]
    pre = warm.pre_update(b.lm, p)
    warm.evaluate_batch(b.lm, [(p, s, 0, pre)] * min(2, b.k))
    warm.evaluate(b.lm, p, s, 0, pre)


def run_paths(args, b: Bench) -> list[dict]:
    paths = []
    for name, fn in [("(c) batched", lambda: batched(b)), ("(b) one at a time", lambda: one_at_a_time(b)),
                     ("(d) careful user", lambda: careful(b, args.careful)),
                     ("(a) reference-style", lambda: reference(b, args.reference, args.pad_to))]:
        if (name.startswith("(a)") and args.reference == 0) or (name.startswith("(d)") and args.careful == 0):
            continue
        print(f"running {name} ...", flush=True)
        out = run_path(name, fn)
        out["evals"] = len(out["results"])
        out["per_min"] = 60 * out["evals"] / out["wall"]
        out["tok_s"] = out["tokens"] / out["train_seconds"] if out["train_seconds"] else math.nan
        out["flops"] = 4 * b.n_params * out["tok_s"]
        print(f"  {out['evals']} evaluations in {out['wall']:.0f} s", flush=True)
        paths.append(out)
    return paths


def report(args, b: Bench, paths: list[dict]) -> dict:
    """The table of paths, their ratios against the targets, generation speed, and whether the paths
    gave the same rewards; returns what goes to --out."""
    by = {p["name"][:3]: p for p in paths}
    print()
    print("| path | evaluations | wall s | evaluations / min | train tokens/s | train GFLOP/s | % of matmul peak | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for p in paths:
        print(f"| {p['name']} | {p['evals']} | {p['wall']:.0f} | {p['per_min']:.2f} | {p['tok_s']:.0f} | "
              f"{p['flops'] / 1e9:.0f} | {100 * p['flops'] / b.peak:.0f}% | {p['peak_rss'] / 2**30:.2f} |")
    print()
    if "(a)" in by:
        a = by["(a)"]
        print(f"(b)/(a) = {by['(b)']['per_min'] / a['per_min']:.1f}x   (target >= 5x; (a) computed "
              f"{a['computed_tokens'] / max(1, a['tokens']):.0f}x the real tokens, as padding)")
    for x, target in [("(a)", 20), ("(d)", 5), ("(b)", 3)]:
        if x in by:
            print(f"(c)/{x} = {by['(c)']['per_min'] / by[x]['per_min']:.2f}x   (target on a GPU at 1B: >= {target}x)")
    print(f"(c) training at {100 * by['(c)']['flops'] / b.peak:.0f}% of the matmul peak (model FLOP utilisation; "
          f"target on a GPU at 1B: >= 35%)")
    gen = generation_speed(b.lm)
    fits = largest_k(b.domain, b.lm, b.pairs, b.seeds)
    print(f"generation: {gen:.0f} tokens/s (greedy, batch 8 x 64 new tokens); largest K that fits: "
          f"{fits if fits is not None else '- (CPU)'}")
    checks = reward_checks(args, b, by)
    rewards = [r["reward"] for r in by["(c)"]["results"]]
    print(f"rewards (c): mean {sum(rewards) / len(rewards):.4f}, min {min(rewards):.4f}, max {max(rewards):.4f}")
    return dict(args=vars(args), k=b.k, precision=b.precision, weights=b.lm.dtype, device=str(b.lm.device),
                matmul_peak=b.peak, n_params=b.n_params, reward_checks=checks, generation_tokens_per_s=gen, largest_k=fits,
                paths=[{key: v for key, v in p.items() if key != "results"} | dict(rewards=[r["reward"] for r in p["results"]])
                       for p in paths], machine=machine())


def reward_checks(args, b: Bench, by: dict) -> dict:
    """Whether (b) equals (c) and (a) equals (b), reward by reward, absolutely and against the spread."""
    checks = {}
    for x, y in [("(b)", "(c)"), ("(a)", "(b)")]:
        if x == "(a)" and b.cfg.batch_size != 1:
            print(f"rewards (a) vs (b): not compared, (a) trains at batch 1 and this recipe at batch {b.cfg.batch_size}")
            continue
        if x in by and y in by:
            n = min(len(by[x]["results"]), len(by[y]["results"]))
            diffs = [abs(r1["reward"] - r2["reward"]) for r1, r2 in zip(by[x]["results"][:n], by[y]["results"][:n])]
            # Measured against how far the self-edits' rewards lie apart (what training on different text
            # moves): on a random-weight model rewards are ~1e-5, so an absolute tolerance passes anything.
            ys = [r["reward"] for r in by[y]["results"][:n]]
            spread = max(ys) - min(ys)
            checks[f"{x} vs {y}"] = max(diffs)
            checks[f"{x} vs {y} / spread"] = max(diffs) / spread if spread > 0 else float("inf")
            verdict = "same" if max(diffs) <= args.tolerance else "DIFFERENT"
            print(f"rewards {x} vs {y}: max difference {max(diffs):.2e} over {n} self-edits -> {verdict} "
                  f"(tolerance {args.tolerance}); {checks[f'{x} vs {y} / spread']:.1e} of the self-edits' spread "
                  f"{spread:.2e}")
    return checks


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    b = setup(args)
    warm_up(b)
    if args.k_sweep:
        sweep(args, b.pairs, lambda k: batched(b, k), b.n_params, b.peak)
        return
    paths = run_paths(args, b)
    summary = report(args, b, paths)
    if args.profile:
        profile_batch(b.lm, b.domain, b.pairs[:b.k], b.seeds[:b.k])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"written {args.out}")


def sweep(args, pairs, batched, n_params: int, peak: float) -> None:
    """The batched path once per K, K ascending (a process's resident memory rarely shrinks, so each
    row's peak is measured after every smaller K has run: an upper bound for that K alone)."""
    ks = sorted({int(x) for x in args.k_sweep.split(",")})
    rows = []
    for k in ks:
        print(f"running (c) batched with K = {k} ...", flush=True)
        out = run_path(f"K = {k}", lambda k=k: batched(k))
        out["per_min"] = 60 * len(out["results"]) / out["wall"]
        out["tok_s"] = out["tokens"] / out["train_seconds"] if out["train_seconds"] else math.nan
        rows.append(dict(k=k, evals=len(out["results"]), wall=out["wall"], per_min=out["per_min"], tok_s=out["tok_s"],
                         mfu=4 * n_params * out["tok_s"] / peak, peak_rss=out["peak_rss"],
                         rewards=[r["reward"] for r in out["results"]]))
        print(f"  {rows[-1]['per_min']:.2f} evaluations/min, peak RSS {out['peak_rss'] / 2**30:.2f} GiB", flush=True)
    best = max(rows, key=lambda r: r["per_min"])
    print()
    print("| K | evaluations | wall s | evaluations / min | vs best | train tokens/s | % of matmul peak | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['evals']} | {r['wall']:.0f} | {r['per_min']:.2f} | {r['per_min'] / best['per_min']:.2f} | "
              f"{r['tok_s']:.0f} | {100 * r['mfu']:.0f}% | {r['peak_rss'] / 2**30:.2f} |")
    spread = max(max(abs(a - b) for a, b in zip(r["rewards"], rows[0]["rewards"])) for r in rows)
    print(f"\nfastest: K = {best['k']}; rewards across K differ by at most {spread:.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = dict(args=vars(args), matmul_peak=peak, n_params=n_params, sweep=rows, machine=machine())
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"written {args.out}")


def profile_batch(lm, domain, pairs, seeds) -> None:
    """Where the time of one batched evaluation goes, by operator."""
    from torch.profiler import ProfilerActivity, profile

    pre = {p.id: domain.pre_update(lm, p) for p, _ in pairs}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        domain.evaluate_batch(lm, [(p, s, seed, pre[p.id]) for (p, s), seed in zip(pairs, seeds)])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
