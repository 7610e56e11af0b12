"""Does continued pretraining's data side stay flat in memory as the number of passages grows?

    .venv/bin/python benchmarks/cpt_memory.py --small 200 --large 4000

Builds the pooled training sequences of n passages (each SQuAD passage plus ten short self-edit
lines, the shape `seal knowledge cpt` pools) twice, for a small and a large n, in one process:
(a) as the on-disk TokenStore the command uses, streamed from a generator, and (b) as a Python list
of tokenized examples, the obvious in-memory alternative. It reports the Python heap each one holds
(tracemalloc, after building and after reading every example back in a shuffled order) and the
large/small ratio: (b) grows with n, (a) holds only the offsets (8 bytes per sequence).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from seal.core.models import load_tokenizer
from seal.core.token_store import TokenStore
from seal.core.training import lm_examples
from seal.knowledge.data import load_passages


def texts(passages, n: int):
    """n passages' sequences, cycling through the pool: the passage and ten lines about it."""
    for i in range(n):
        p = passages[i % len(passages)]
        words = p.context.split()
        yield f"{p.title}\n{p.context}"
        for k in range(10):
            yield f"{p.title}\n" + " ".join(words[k * 12:(k + 1) * 12] or words[:12]) + f" (line {k}, copy {i})"


def measure(build, n_sequences: int) -> dict:
    tracemalloc.start()
    start = time.perf_counter()
    data = build()
    built = tracemalloc.get_traced_memory()[0]
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    tokens = sum(len(data[i].input_ids) for i in order)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dict(sequences=len(data), tokens=tokens, held_mb=round(built / 2**20, 2), peak_mb=round(peak / 2**20, 2),
                seconds=round(time.perf_counter() - start, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=200, help="passages in the small pool")
    ap.add_argument("--large", type=int, default=4000, help="passages in the large pool")
    ap.add_argument("--data", default="../shared/data/squad/squad11_dev_pool.json")
    args = ap.parse_args()
    tok = load_tokenizer("embedded")
    passages = load_passages("seal-json", args.data)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            results[("store", n)] = measure(lambda: TokenStore.write(Path(tmp) / f"s{n}", tok, texts(passages, n), 512), n)
            results[("list", n)] = measure(lambda: lm_examples(tok, list(texts(passages, n)), 512), n)
    print("| data | passages | sequences | tokens | heap held (MB) | heap peak (MB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for (kind, n), r in results.items():
        name = "TokenStore (disk)" if kind == "store" else "list of examples"
        print(f"| {name} | {n} | {r['sequences']} | {r['tokens']} | {r['held_mb']} | {r['peak_mb']} | {r['seconds']} |")
    for kind in ("store", "list"):
        small, large = results[(kind, args.small)], results[(kind, args.large)]
        print(f"{kind}: held memory x{large['held_mb'] / max(small['held_mb'], 1e-3):.1f} "
              f"for x{args.large / args.small:.0f} passages")
    print(json.dumps({f"{k}-{n}": r for (k, n), r in results.items()}))


if __name__ == "__main__":
    main()
