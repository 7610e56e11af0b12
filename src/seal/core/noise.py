"""How noisy a self-edit's reward is, from a restem run with eval_times >= 2.

Per E-step (one policy's k samples per context, each trained `eval_times` times):
- repeat std: how much one self-edit's reward moves between its trainings (the square root of the
  mean, over self-edits, of the variance over its repeats);
- between std: how much the self-edits of one context differ in what they are worth (the square root
  of the mean, over contexts, of the variance of their mean rewards less the repeat noise those means
  still carry, the repeat variance over the number of repeats; 0 when that is all there is); a between
  std well under the repeat std means the choice of the best is mostly chance;
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


def _best(means: np.ndarray) -> int:
    return len(means) - 1 - int(np.argmax(means[::-1]))  # ties go to the last, as restem.keep does


def flip_share(matrix: np.ndarray, draws: int, rng: np.random.Generator) -> float:
    """Share of bootstrap draws of the repeats (one draw of repeat indices for all rows) whose best row
    differs from the best row of the full matrix (ties go to the last row, as `restem.keep` does)."""
    original = _best(matrix.mean(axis=1))
    n = matrix.shape[1]
    idx = rng.integers(0, n, size=(draws, n))
    means = matrix[:, idx].mean(axis=2).T  # (draws, rows)
    return float(np.mean([_best(m) != original for m in means]))


def noise_rows(run: Run, draws: int = 1000) -> list[dict]:
    """One row per E-step with at least one context of >= 2 self-edits x >= 2 repeats."""
    rows = []
    for r, data in by_round(run).items():
        matrices = [m for m in (context_matrix(s) for s in data["evals"].values()) if m is not None]
        if not matrices:
            continue
        rng = np.random.default_rng(run.config.seed)
        repeat_var = statistics.fmean(float(v) for m in matrices for v in m.var(axis=1, ddof=1))
        # a mean over R repeats keeps repeat variance / R of its repeat noise: removed, per context
        between_var = max(0.0, statistics.fmean(float(m.mean(axis=1).var(ddof=1) - m.var(axis=1, ddof=1).mean() / m.shape[1])
                                                for m in matrices))
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


# --- the reward against a watched one -------------------------------------------------------------
# With a second reward recorded beside the reward and never used (`watched`, e.g. the gold questions
# of a passage rewarded on questions it wrote itself), how well the reward ranks a context's
# self-edits by the watched reward, and what choosing by it is worth in watched reward. The choices
# are scored on a repeat they were not made on (each repeat in turn is held out, the choice made on
# the mean of the others): a self-edit chosen and scored on the same training looks better than it is.

WATCHED_COLUMNS = [
    Column("run", kind="text"), Column("policy", kind="text"), Column("contexts", kind="int"),
    Column("self-edits", kind="int"), Column("rank corr", "rank correlation", digits=2),
    Column("same best", digits=2), Column("chance", "same best by chance", digits=2),
    Column("random", "watched: random self-edit", digits=4),
    Column("by reward", "watched: chosen by the reward", digits=4),
    Column("by watched", "watched: chosen by the watched reward", digits=4),
    Column("gain", "by reward - random (95% CI)", kind="diff"),
    Column("captured", "share of the watched choice's gain", digits=2),
]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def watched_rows(run: Run, bootstrap: int = 2000) -> list[dict]:
    """One row per E-step with a context of >= 2 self-edits that have both rewards on the same repeats."""
    from seal.core.stats import paired_difference

    rows = []
    for r, data in by_round(run).items():
        pairs = {}  # {cid: (rewards, watched)}, each (self-edits x the repeats all of them have)
        for cid, watched in data["watched"].items():
            evals = data["evals"][cid]
            both = {i: {t: (evals[i][t], w) for t, w in v.items() if t in evals[i]} for i, v in watched.items()}
            shared = sorted(set.intersection(*(set(v) for v in both.values()))) if both else []
            if len(both) >= 2 and shared:
                grid = np.asarray([[both[i][t] for t in shared] for i in sorted(both)], dtype=float)
                pairs[cid] = (grid[..., 0], grid[..., 1])
        if not pairs:
            continue
        corr, same, chance = [], [], []
        held = {"random": {}, "by reward": {}, "by watched": {}}
        for cid, (rewards, seen) in pairs.items():
            x, y = rewards.mean(axis=1), seen.mean(axis=1)
            if np.ptp(x) > 0 and np.ptp(y) > 0:
                corr.append(float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]))
            same.append(float(_best(x) == _best(y)))
            chance.append(1 / len(x))
            n = rewards.shape[1]
            if n >= 2:
                rest = lambda m, t: np.delete(m, t, axis=1).mean(axis=1)  # the mean over the other repeats
                held["random"][cid] = statistics.fmean(float(seen[:, t].mean()) for t in range(n))
                held["by reward"][cid] = statistics.fmean(float(seen[_best(rest(rewards, t)), t]) for t in range(n))
                held["by watched"][cid] = statistics.fmean(float(seen[_best(rest(seen, t)), t]) for t in range(n))
        row = {"run": run.path.name, "policy": "base model" if r == 1 else f"round {r - 1}", "contexts": len(pairs),
               "self-edits": sum(len(m) for m, _ in pairs.values()), "rank corr": statistics.fmean(corr) if corr else None,
               "same best": statistics.fmean(same), "chance": statistics.fmean(chance)}
        if held["random"]:
            means = {k: statistics.fmean(v.values()) for k, v in held.items()}
            reach = means["by watched"] - means["random"]
            row.update(means, gain=paired_difference(held["by reward"], held["random"], bootstrap, run.config.seed),
                       captured=(means["by reward"] - means["random"]) / reach if reach > 0 else None)
        rows.append(row)
    return rows


def watched_table(runs: list[Run], bootstrap: int = 2000) -> Table:
    rows = [row for run in runs for row in watched_rows(run, bootstrap)]
    notes = ["watched: the reward recorded beside the reward and never used to choose (reward.watch_gold: the "
             "gold questions); a choice is scored on a repeat it was not made on, each repeat held out in turn"]
    return Table(WATCHED_COLUMNS, rows, "by reward", "watched reward of the chosen self-edit", notes=notes)
