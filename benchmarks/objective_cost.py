"""What each inner-loop objective costs: evaluations per minute and peak memory, same self-edits, one run.

    .venv/bin/python benchmarks/objective_cost.py                       # ~6 min on 2 CPU cores
    .venv/bin/python benchmarks/objective_cost.py --config configs/knowledge-distill.yaml --self-edits 12

The same self-edits (sampled once from the base model on built-in passages), the same seeds and the
same LoRA recipe go through the batched inner loop (`KnowledgeDomain.evaluate_batch`, K adapters a
batch) once per objective: `lm`, then `distill` and `mix`, whose teacher distributions (the model
reading the passage before each training item) are computed here without a cache, so their cost is
in the figure. A first batch under `lm` warms the process up and is not counted. Prints evaluations
per minute, the ratio to `lm` (the goal: at least 0.8), the seconds the teacher passes took, and the
peak RSS while each objective ran; the JSON goes to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import PeakMemory, machine
from seal.core.config import load_config
from seal.core.models import load_configured
from seal.core.objectives import teacher_targets
from seal.core.restem import derive_seed, sample_self_edits
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/knowledge-distill.yaml")
    parser.add_argument("--self-edits", type=int, default=8, help="self-edits per objective (built-in passages, one each)")
    parser.add_argument("--k", type=int, default=4, help="adapters per batch")
    parser.add_argument("--objectives", default="lm,distill,mix")
    parser.add_argument("--set", action="append", default=[], help="a configuration override")
    parser.add_argument("--out", default="benchmarks/results/objective_cost.json")
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    lm = load_configured(config.model)
    domain = KnowledgeDomain(config)
    passages = (load_builtin() * 4)[:args.self_edits]
    print(f"sampling {len(passages)} self-edits ...", flush=True)
    samples = sample_self_edits(lm, [domain.self_edit_prompt(p) for p in passages], 1, config, seed=config.seed)
    items = [(p, s["self_edits"][0], derive_seed(config.seed, "bench", i), domain.pre_update(lm, p))
             for i, (p, s) in enumerate(zip(passages, samples))]
    domain.with_objective("lm").evaluate_batch(lm, items[:args.k])  # warm-up, not counted

    rows = []
    for name in args.objectives.split(","):
        d = domain.with_objective(name)
        teacher_seconds = 0.0
        if d.objective.needs_teacher:  # the teacher passes alone, timed on fresh examples
            start = time.perf_counter()
            for p, text, seed, pre in items:
                update = d.prepare(lm, p, text, seed, pre)
                if update.examples:
                    prefix = d.teacher_prefix(lm, p)
                    teacher_targets(lm, update.examples, [prefix] * len(update.examples), d.objective,
                                    precision=d.precision(lm), batch_size=2 * config.inner_loop.batch_size)
            teacher_seconds = time.perf_counter() - start
        with PeakMemory() as mem:
            start = time.perf_counter()
            results = []
            for b in range(0, len(items), args.k):
                results += d.evaluate_batch(lm, items[b:b + args.k])
            wall = time.perf_counter() - start
        trained = [r for r in results if r.get("train")]
        rows.append(dict(objective=name, evaluations=len(results), trained=len(trained), wall=wall,
                         per_min=60 * len(results) / wall, teacher_seconds=teacher_seconds, peak_rss=mem.peak,
                         steps=sum(r["train"]["steps"] for r in trained) / max(1, len(trained)),
                         reward=sum(r["reward"] for r in results) / len(results)))
        print(f"  {name}: {rows[-1]['per_min']:.2f} evaluations/min, peak RSS {mem.peak / 2**30:.2f} GiB", flush=True)

    lm_rate = next((r["per_min"] for r in rows if r["objective"] == "lm"), None)
    print(f"\n{len(items)} self-edits, K = {args.k}, recipe {args.config} {' '.join(args.set)}")
    print("| objective | evaluations | wall s | evaluations / min | vs lm | teacher passes s | steps per update "
          "| mean reward | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['per_min'] / lm_rate:.2f}" if lm_rate else "-"
        print(f"| {r['objective']} | {r['evaluations']} | {r['wall']:.0f} | {r['per_min']:.2f} | {ratio} | "
              f"{r['teacher_seconds']:.1f} | {r['steps']:.1f} | {r['reward']:.4f} | {r['peak_rss'] / 2**30:.2f} |")
    where = machine()
    print(f"commit {where['commit']}, {where['cpu']}, {where['threads']} threads, bf16 instructions "
          f"{where['bf16'] or 'none'}{', ' + where['gpu'] if where['gpu'] else ''}, precision {domain.precision(lm)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(rows=rows, config=args.config, overrides=args.set, k=args.k, machine=where), indent=1))

if __name__ == "__main__":
    main()
