"""What bf16 autocast costs with frozen weights, and what casting them once a call saves, in one run.

    .venv/bin/python benchmarks/weight_casts.py                       # the embedded model, bf16 autocast
    .venv/bin/python benchmarks/weight_casts.py --tokens 1024 --steps 6

Autocast casts a weight to bf16 at every matmul unless the weight needs a gradient (those casts it
caches within one autocast region). The model's own weights need none, so a training pass, and every
token generated, cast all of them again. Three variants, each in a fresh process (its own peak RSS):

  (a) as before: the loaded model's weights required gradients, so the batched inner loop computed
      (and accumulated) a gradient for every one of them in each backward pass, and cast them once a
      forward pass (once a generate call: one autocast region);
  (b) the weights frozen, autocast alone: no weight gradients, but a cast at every matmul;
  (c) the default now: frozen, and `generation.half_weights` casts each linear weight once a call.

Each runs `multi_lora.train_bank` (K adapters, one row of --tokens tokens each a step, the device's
tokens_per_forward) and then greedy generation through the bank (--prompts prompts, --new tokens
each). It prints seconds per step, training tokens/s, generated tokens/s, the peak, the first loss and
a digest of the generated text (the same in all three: they compute the same numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import rss, run_variants, save

VARIANTS = {"a": "(a) weights need gradients (as before)", "b": "(b) frozen, autocast casts at every matmul",
            "c": "(c) frozen, cast once a call (default)"}


def child(args) -> None:
    import torch

    from seal.core import generation, multi_lora
    from seal.core.config import LoraTrainConfig
    from seal.core.examples import Example
    from seal.core.generation import generate
    from seal.core.models import load_model
    from seal.core.multi_lora import adapter_bank, train_bank
    from seal.knowledge.data import load_passages

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, args.device, args.dtype)
    if args.variant == "a":
        lm.model.requires_grad_(True)
    if args.variant in "ab":
        for module in (generation, multi_lora):
            module.half_weights = lambda model, precision: contextlib.nullcontext()
    passages = load_passages("builtin")
    ids = lm.tokenizer(" ".join(p.context for p in passages) * 10, add_special_tokens=False)["input_ids"]
    n = args.tokens
    row = lambda i: ids[i * n:(i + 1) * n]
    datasets = [[Example(row(k * args.steps + s), row(k * args.steps + s)) for s in range(args.steps)] for k in range(args.k)]
    if any(len(ex.input_ids) < n for d in datasets for ex in d):
        raise SystemExit(f"the built-in passages hold fewer than {args.k * args.steps} rows of {n} tokens")
    cfg = LoraTrainConfig(rank=args.rank, alpha=2 * args.rank, lr=1e-3, epochs=1, batch_size=1, max_seq_len=n)
    seeds = list(range(args.k))
    prompts = [p.context[:200] for p in passages[:args.prompts]]  # continued, not answered: no early end
    with adapter_bank(lm, cfg, seeds) as bank:
        start = time.perf_counter()
        stats = train_bank(lm, bank, datasets, cfg, seeds=seeds, precision=args.precision)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        out = generate(lm, prompts, max_new_tokens=args.new, batch_size=len(prompts), precision=args.precision,
                       adapter_rows=[i % args.k for i in range(len(prompts))])
        generate_s = time.perf_counter() - start
    text = "\n".join(g.text for g in out)
    print(json.dumps(dict(seconds_per_step=train_s / args.steps, tokens_per_s=args.k * args.steps * n / train_s,
                          generated_per_s=sum(g.n_tokens for g in out) / generate_s, peak=rss(peak=True),
                          first_loss=sum(s.first_loss for s in stats) / len(stats),
                          text=hashlib.sha1(text.encode()).hexdigest()[:10])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="model.dtype")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="autocast")
    parser.add_argument("--k", type=int, default=4, help="adapters in the batch")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=320, help="tokens in each row (the demo's: 4 examples of about 80)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new", type=int, default=48, help="tokens generated for each prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="abc")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/weight_casts.json")
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    rows = run_variants(__file__, VARIANTS, args.variants)
    print(f"\nK = {args.k} adapters (rank {args.rank}), one row of {args.tokens} tokens each a step, {args.steps} steps; "
          f"{args.prompts} prompts x {args.new} new tokens; {args.threads} threads, autocast {args.precision}\n")
    print("| variant | s / step | training tokens/s | generated tokens/s | peak GiB | first loss | text |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seconds_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['generated_per_s']:.1f} | "
              f"{r['peak'] / 2**30:.2f} | {r['first_loss']:.4f} | {r['text']} |")
    save(args, rows)


if __name__ == "__main__":
    main()
