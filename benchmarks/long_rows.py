"""Peak memory and speed of an inner-loop batch whose rows are longer than a forward pass, in one run.

    .venv/bin/python benchmarks/long_rows.py                      # K = 4 adapters, rows of 3,000 tokens
    .venv/bin/python benchmarks/long_rows.py --tokens 1500 --steps 4

An ARC example with size or chain augmentations turns 10x10 grids into 20x20 ones, and a row of the
batched inner loop then holds 2,000 to 4,000 tokens. A row cannot be split, so such a row has a forward
pass of its own, longer than `inner_loop.tokens_per_forward`. The same K adapters train on the same
rows (SQuAD-like built-in passages repeated to --tokens tokens, one row per adapter and step) with
`multi_lora.train_bank`, each variant in a fresh process so that its peak resident memory (ru_maxrss;
on CUDA, the peak allocated memory) is its own:

  (a) tokens_per_forward as long as the rows: no pass is checkpointed (what the inner loop did before
      long rows were checkpointed);
  (b) the device's default tokens_per_forward (512 on a CPU): the long rows' passes are checkpointed;
  (c) gradient_checkpointing on for every pass.

It prints the peak, the growth over the loaded model, seconds per step, training tokens/s, and the
first step's mean loss (the same in all three: they compute the same function).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import rss, run_variants, save

VARIANTS = {"a": "(a) one pass a row, not checkpointed", "b": "(b) default tokens_per_forward: long rows checkpointed",
            "c": "(c) gradient_checkpointing everywhere"}


def child(args) -> None:
    import torch

    from seal.core.config import LoraTrainConfig
    from seal.core.examples import Example
    from seal.core.models import load_model
    from seal.core.multi_lora import adapter_bank, train_bank
    from seal.knowledge.data import load_passages

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, args.device, args.dtype)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    loaded = rss()
    cfg = LoraTrainConfig(rank=args.rank, alpha=2 * args.rank, lr=1e-4, epochs=1, batch_size=1, max_seq_len=args.tokens,
                          gradient_checkpointing=args.variant == "c")
    text = " ".join(p.context for p in load_passages("builtin")) * 40
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    n = args.tokens
    row = lambda i: ids[i * n:(i + 1) * n]
    datasets = [[Example(row(k * args.steps + s), row(k * args.steps + s)) for s in range(args.steps)] for k in range(args.k)]
    if any(len(ex.input_ids) < n for d in datasets for ex in d):
        raise SystemExit(f"the built-in passages hold fewer than {args.k * args.steps} rows of {n} tokens")
    seeds = list(range(args.k))
    start = time.perf_counter()
    with adapter_bank(lm, cfg, seeds) as bank:
        stats = train_bank(lm, bank, datasets, cfg, seeds=seeds, precision=args.precision,
                           max_tokens=n if args.variant == "a" else None)
    seconds = time.perf_counter() - start
    print(json.dumps(dict(first_loss=sum(s.first_loss for s in stats) / len(stats), seconds_per_step=seconds / args.steps,
                          tokens_per_s=args.k * args.steps * n / seconds, loaded=loaded, peak=rss(peak=True))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="model.dtype")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="autocast")
    parser.add_argument("--k", type=int, default=4, help="adapters in the batch")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=3000, help="tokens in each row")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="abc")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/long_rows.json")
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    rows = run_variants(__file__, VARIANTS, args.variants)
    print(f"\nK = {args.k} adapters (rank {args.rank}), one row of {args.tokens} tokens each a step, {args.steps} steps, "
          f"{args.threads} threads, autocast {args.precision}\n")
    print("| variant | peak memory GiB | over the loaded model GiB | s / step | tokens/s | first loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['peak'] / 2**30:.2f} | {(r['peak'] - r['loaded']) / 2**30:.2f} | "
              f"{r['seconds_per_step']:.1f} | {r['tokens_per_s']:.0f} | {r['first_loss']:.4f} |")
    save(args, rows)


if __name__ == "__main__":
    main()
