"""Which inner-loop LoRA settings learn a passage best per second, on the embedded model.

    .venv/bin/python benchmarks/inner_loop_settings.py --passages 6

For each setting, trains a fresh adapter on each built-in passage alone (the "passage only"
condition) and reports, averaged over passages: the gain in mean gold-answer log-likelihood (asked
without the passage), the F1 gain, the final training loss, and the seconds per evaluation. All
settings run in one process on the same passages, so the numbers compare as ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from seal.core.config import load_config
from seal.core.models import load_model
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain

SETTINGS = {
    "reference (q,v r32, 10 ep, bs1)": ["inner_loop.preset=reference"],
    "q,v r16, 5 ep, bs4": ["inner_loop.target_modules=[q_proj,v_proj]"],
    "all linear r16, 3 ep, bs4": ["inner_loop.epochs=3"],
    "all linear r16, 5 ep, bs4 (default)": [],
    "all linear r16, 5 ep, bs4, lr 3e-4": ["inner_loop.lr=3e-4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("embedded")
    passages = load_builtin()[: args.passages]
    base = KnowledgeDomain(load_config(None, ["reward.metric=loglik"]))
    pre = {p.id: base.pre_update(lm, p) for p in passages}
    print("| setting | loglik gain | F1 gain | last loss | s / evaluation |\n|---|---|---|---|---|")
    for name, overrides in SETTINGS.items():
        domain = KnowledgeDomain(load_config(None, ["reward.metric=loglik", *overrides]))
        gains, f1s, losses, secs = [], [], [], []
        for p in passages:
            start = time.perf_counter()
            r = domain.evaluate(lm, p, None, seed=0, pre=pre[p.id])
            secs.append(time.perf_counter() - start)
            gains.append(r["means"]["loglik"] - pre[p.id]["means"]["loglik"])
            f1s.append(r["means"]["f1"] - pre[p.id]["means"]["f1"])
            losses.append(r["train"]["last_loss"])
        n = len(passages)
        print(f"| {name} | {sum(gains) / n:+.2f} | {sum(f1s) / n:+.3f} | {sum(losses) / n:.2f} | {sum(secs) / n:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
