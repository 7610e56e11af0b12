"""How noisy a self-edit's reward is, from a restem run with eval_times >= 2.

Per E-step (one policy's k samples per context, each trained `eval_times` times):
- repeat std: how much one self-edit's reward moves between its trainings (the square root of the
  mean, over self-edits, of the variance over its repeats);
- between std: how much the self-edits of one context differ (the square root of the mean, over
  contexts, of the variance of their mean rewards); a between std well under the repeat std means
  the choice of the best is mostly chance;
- pair std: how much the difference between two self-edits of a context moves between repeats (the
  square root of the mean, over pairs, of the variance over repeats of their reward difference): the
  noise a comparison of two self-edits carries, and what common seeds exist to reduce (they share a
  repeat's seed between the self-edits, so what the seed does to both cancels in the difference);
- flips: the share of contexts whose best-of-k self-edit changes when the repeats are drawn again
  (a bootstrap over repeats, the same draw for every self-edit of a context, so that a shared seed
  per repeat, inner_loop.common_seeds, stays shared).
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np

from seal.core.curves import by_round
from seal.core.runs import Run
from seal.core.tables import Column, Table

COLUMNS = [Column("run", kind="text"), Column("policy", kind="text"), Column("common seeds", kind="text"),
           Column("contexts", kind="int"), Column("repeats", kind="int"), Column("repeat std", digits=4),
           Column("between std", digits=4), Column("ratio", "between / repeat", digits=2),
           Column("pair std", "pair-difference std", digits=4),
           Column("flips", "best-of-k flips", digits=2)]

# The paper's measurement at 7B (Qwen2.5-7B, SQuAD), for the side-by-side row.
PAPER = {"run": "SEAL paper (7B)", "policy": "base model", "common seeds": "-", "repeat std": 0.16,
         "between std": 0.12, "ratio": 0.12 / 0.16}


def context_matrix(samples: dict[int, dict[int, float]]) -> np.ndarray | None:
    """(self-edits x repeats) rewards of one context, over the repeats every self-edit has; None when
    fewer than 2 self-edits or 2 repeats are complete."""
    shared = set.intersection(*(set(v) for v in samples.values())) if samples else set()
    if len(samples) < 2 or len(shared) < 2:
        return None
    order = sorted(shared)
    return np.asarray([[samples[i][t] for t in order] for i in sorted(samples)], dtype=float)


def flip_share(matrix: np.ndarray, draws: int, rng: np.random.Generator) -> float:
    """Share of bootstrap draws of the repeats (one draw of repeat indices for all rows) whose best row
    differs from the best row of the full matrix (ties go to the last row, as `restem.keep` does)."""
    best = lambda m: len(m) - 1 - int(np.argmax(m[::-1]))
    original = best(matrix.mean(axis=1))
    n = matrix.shape[1]
    idx = rng.integers(0, n, size=(draws, n))
    means = matrix[:, idx].mean(axis=2).T  # (draws, rows)
    return float(np.mean([best(m) != original for m in means]))


def noise_rows(run: Run, draws: int = 1000) -> list[dict]:
    """One row per E-step with at least one context of >= 2 self-edits x >= 2 repeats."""
    rows = []
    for r, data in by_round(run).items():
        matrices = [m for m in (context_matrix(s) for s in data["evals"].values()) if m is not None]
        if not matrices:
            continue
        rng = np.random.default_rng(run.config.seed)
        repeat_var = statistics.fmean(float(v) for m in matrices for v in m.var(axis=1, ddof=1))
        between_var = statistics.fmean(float(m.mean(axis=1).var(ddof=1)) for m in matrices)
        repeat_std, between_std = math.sqrt(repeat_var), math.sqrt(between_var)
        pair_var = statistics.fmean(float((m[i] - m[j]).var(ddof=1))
                                    for m in matrices for i, j in itertools.combinations(range(len(m)), 2))
        rows.append({"run": run.path.name, "policy": "base model" if r == 1 else f"round {r - 1}",
                     "common seeds": "yes" if run.config.inner_loop.common_seeds else "no",
                     "contexts": len(matrices), "repeats": min(m.shape[1] for m in matrices),
                     "repeat std": repeat_std, "between std": between_std,
                     "ratio": between_std / repeat_std if repeat_std > 0 else None, "pair std": math.sqrt(pair_var),
                     "flips": statistics.fmean(flip_share(m, draws, rng) for m in matrices)})
    return rows


def noise_table(runs: list[Run], draws: int = 1000) -> Table:
    rows = [row for run in runs for row in noise_rows(run, draws)]
    notes = ["standard deviations are in each run's reward units (the paper's: accuracy on 0-1); the ratio "
             "between / repeat compares across scales"]
    return Table(COLUMNS, rows + [PAPER] if rows else [], "flips", "share of best-of-k choices that flip", notes=notes)
