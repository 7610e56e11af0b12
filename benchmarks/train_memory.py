"""Peak memory and speed of one fine-tuning recipe, three ways, each in its own process, in one run.

    .venv/bin/python benchmarks/train_memory.py                          # CPT's shape: batch 8 x 512 tokens
    .venv/bin/python benchmarks/train_memory.py --update full --steps 3

The same batches (SQuAD passages, cut or repeated to --tokens tokens each) train the embedded model
(or a random-weight --arch) for --steps optimiser steps with `training.train`, as `seal knowledge cpt`
does, with:

  (a) the model's own loss (`model(**batch).loss`: the whole batch's vocabulary logits at once),
  (b) the project's chunked loss (`training.lm_loss`: logits for LOGIT_CHUNK positions at a time,
      computed again in the backward pass),
  (c) the chunked loss with gradient checkpointing.

Each runs in a fresh process, so that its peak resident memory (ru_maxrss; on CUDA, the peak
allocated memory) is its own. It prints the peak, the growth over the loaded model, seconds per step,
and the first step's loss (the same in all three: they compute the same function).
"""

from __future__ import annotations

import argparse
import json
import time

from harness import rss, run_variants, save

VARIANTS = {"a": "(a) model's own loss", "b": "(b) chunked loss", "c": "(c) chunked + checkpointing"}


def child(args) -> None:
    import torch

    from seal.core import training
    from seal.core.config import LoraTrainConfig
    from seal.core.examples import Example
    from seal.core.models import load_model
    from seal.knowledge.data import load_passages

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, args.device, args.dtype)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    loaded = rss()
    if args.variant == "a":
        training.lm_loss = lambda model, batch: model(**batch).loss
    cfg = LoraTrainConfig(rank=32, alpha=64, lr=1e-4, epochs=1, batch_size=args.batch, max_seq_len=args.tokens,
                          gradient_checkpointing=args.variant == "c")
    text = " ".join(p.context for p in load_passages("builtin")) * 20
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    examples = [Example(ids[i * args.tokens:(i + 1) * args.tokens], ids[i * args.tokens:(i + 1) * args.tokens])
                for i in range(args.batch * args.steps)]
    precision = "bf16" if args.precision == "bf16" else "fp32"
    start = time.perf_counter()
    with training.temporary_update(lm, examples, cfg, full=args.update == "full", seed=0, precision=precision) as stats:
        seconds = time.perf_counter() - start
    print(json.dumps(dict(first_loss=stats.first_loss, seconds_per_step=seconds / stats.steps, loaded=loaded,
                          peak=rss(peak=True))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="model.dtype")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="autocast")
    parser.add_argument("--update", default="lora", choices=["lora", "full"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="abc")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/train_memory.json")
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    rows = run_variants(__file__, VARIANTS, args.variants)
    print(f"\n{args.update} update, batch {args.batch} x {args.tokens} tokens, {args.steps} steps, "
          f"dtype {args.dtype}, autocast {args.precision}\n")
    print("| loss | peak memory GiB | over the loaded model GiB | s / step | first loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['peak'] / 2**30:.2f} | {(r['peak'] - r['loaded']) / 2**30:.2f} | "
              f"{r['seconds_per_step']:.1f} | {r['first_loss']:.4f} |")
    save(args, rows)


if __name__ == "__main__":
    main()
