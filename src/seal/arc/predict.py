"""Predicting a test output: greedy answers under several views of the task, mapped back, voted on.

A view is an invertible transform of the whole task plus an order of its demonstrations. Each view's
answer is parsed (a malformed one is simply a wrong answer), mapped back through the inverse
transform, and chosen among (pass@2 by default) by one of three methods (`predict.method`):
- flat: the most frequent grids over all views;
- hierarchical: within each transform (its views under every demonstration order) the most frequent
  grid, then the grids that the most transforms chose (ties: the more frequent over all views);
- likelihood: the most voted candidates ordered by their mean token log-likelihood, averaged over
  every view (the candidate mapped into the view, after the view's prompt), which is how the
  strongest ARC Prize 2024 entries ranked their answers.
With `predict.compare_methods`, whether each method would have solved the task is recorded too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from seal.arc.augment import Dihedral
from seal.arc.grids import key, parse, to_text, token_length
from seal.arc.prompts import answer_text, task_prompt
from seal.arc.tasks import Task
from seal.core.generation import completion_logprobs, generate
from seal.core.models import LoadedModel

METHODS = ("flat", "hierarchical", "likelihood")  # predict.method: how the attempts are chosen
RAW_CHARS = 200  # each view's answer is recorded as written, up to this length, to see how it failed


@dataclass(frozen=True)
class View:
    transform: Dihedral
    order: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.transform.name + ("" if self.order == tuple(sorted(self.order)) else f"|order{list(self.order)}")


def demo_orders(n: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """As given, then reversed, then seeded shuffles: `count` distinct orders at most."""
    orders = [tuple(range(n)), tuple(reversed(range(n)))]
    rng = np.random.default_rng(seed)
    for _ in range(20 * count):
        orders.append(tuple(int(i) for i in rng.permutation(n)))
    unique = list(dict.fromkeys(orders))
    return unique[:count]


def views(task: Task, names: list[str], orders: int, seed: int = 0) -> list[View]:
    return [View(Dihedral(name), order) for name in names for order in demo_orders(len(task.train), orders, seed)]


def view_prompt(task: Task, test_index: int, view: View, sep: str = "") -> str:
    t = view.transform
    demos = [task.train[i].map(t) for i in view.order]
    return task_prompt(demos, t.apply(task.test[test_index].input), sep)


def vote(answers: list[np.ndarray | None], attempts: int = 2) -> list[np.ndarray]:
    """The `attempts` most frequent grids among the answers (None = malformed, no vote); ties go to the
    grid that appeared first, so the identity view wins a tie."""
    counts, first, grids = Counter(), {}, {}
    for i, g in enumerate(answers):
        if g is None:
            continue
        k = key(g)
        counts[k] += 1
        first.setdefault(k, i)
        grids[k] = g
    ranked = sorted(counts, key=lambda k: (-counts[k], first[k]))
    return [grids[k] for k in ranked[:attempts]]


def vote_hierarchical(answers: list[tuple[str, np.ndarray | None]], attempts: int = 2) -> list[np.ndarray]:
    """(family, grid) answers: each family's most frequent grid (a tie: its first), then the grids chosen
    by the most families, ties broken by the grid's count over all answers and then by the first
    appearance; attempts left over are filled from the flat vote."""
    families: dict[str, list] = {}
    for family, g in answers:
        families.setdefault(family, []).append(g)
    flat = vote([g for _, g in answers], len(answers))
    rank = {key(g): i for i, g in enumerate(flat)}  # flat order: count over all answers, then first seen
    chosen = Counter(key(w[0]) for gs in families.values() if (w := vote(gs, 1)))
    top = sorted(chosen, key=lambda k: (-chosen[k], rank[k]))[:attempts]
    out = [flat[rank[k]] for k in top]
    return out + [g for g in flat if key(g) not in set(top)][:attempts - len(out)]


def solved(attempts: list[np.ndarray], target: np.ndarray | None) -> bool:
    return target is not None and any(a.shape == target.shape and np.array_equal(a, target) for a in attempts)


def answer_limit(task: Task, cap: int, tokenizer, sep: str = "") -> int:
    """New tokens allowed for an answer: twice the largest grid the model may see (the demonstrations'
    inputs and outputs, the test inputs; never a test output, even when it is known), in this
    tokenizer's tokens of the grid text, capped."""
    seen = [g for e in task.train for g in (e.input, e.output)] + [e.input for e in task.test]
    return min(cap, 2 * max(token_length(tokenizer, g, sep) for g in seen) + 4)


def predict(lm: LoadedModel, jobs: list[tuple[Task, int | None]], cfg, *, precision: str = "fp32",
            seed: int = 0, sep: str = "") -> list[dict]:
    """For each (task, adapter) job (adapter: a row of the installed adapter bank, or None for the
    model as it is), attempts for every test input and whether they solve it. All views of one task's
    jobs are generated in shared batches. `sep`: the grid text's cell separator (grids.separator)."""
    out: list[dict | None] = [None] * len(jobs)
    by_task: dict[str, list[int]] = {}
    for j, (task, _) in enumerate(jobs):
        by_task.setdefault(task.id, []).append(j)
    for indices in by_task.values():
        task = jobs[indices[0]][0]
        vs = views(task, cfg.views, cfg.orders, seed)
        prompts, rows, where = [], [], []
        for j in indices:
            for t in range(len(task.test)):
                for v in vs:
                    prompts.append(view_prompt(task, t, v, sep))
                    rows.append(jobs[j][1])
                    where.append((j, t, v))
        adapter_rows = None if all(r is None for r in rows) else rows
        gens = generate(lm, prompts, max_new_tokens=answer_limit(task, cfg.max_new_tokens, lm.tokenizer, sep),
                        batch_size=cfg.batch_size, precision=precision, adapter_rows=adapter_rows)
        answers: dict[tuple[int, int], list] = {}
        for (j, t, v), gen in zip(where, gens):
            g = parse(gen.text)
            back = None if g is None else v.transform.inverse(g)
            answers.setdefault((j, t), []).append((v, back, gen.text))
        methods = list(METHODS) if cfg.compare_methods else [cfg.method]
        scored = (_likelihoods(lm, task, jobs, indices, answers, vs, cfg, precision, sep)
                  if "likelihood" in methods else {})
        for j in indices:
            tests = []
            for t, example in enumerate(task.test):
                mine = answers[(j, t)]
                picks = {m: _attempts(m, mine, scored.get((j, t)), cfg.attempts) for m in methods}
                attempts = picks[cfg.method]
                tests.append(dict(solved=solved(attempts, example.output), attempts=[to_text(a) for a in attempts],
                                  solved_by={m: solved(a, example.output) for m, a in picks.items()},
                                  well_formed=sum(g is not None for _, g, _ in mine), views=len(mine),
                                  raw={v.name: text[:RAW_CHARS] for v, _, text in mine}))
            out[j] = dict(solved=all(x["solved"] for x in tests), tests=tests,
                          solved_by={m: all(x["solved_by"][m] for x in tests) for m in methods})
    return out


def _attempts(method: str, mine: list[tuple], scores: list[tuple[float, np.ndarray]] | None,
              attempts: int) -> list[np.ndarray]:
    if method == "hierarchical":
        return vote_hierarchical([(v.transform.name, g) for v, g, _ in mine], attempts)
    if method == "likelihood" and scores:
        return [g for _, g in sorted(scores, key=lambda s: -s[0])[:attempts]]
    return vote([g for _, g, _ in mine], attempts)


def _likelihoods(lm: LoadedModel, task: Task, jobs: list, indices: list[int], answers: dict, vs: list[View],
                 cfg, precision: str, sep: str = "") -> dict[tuple[int, int], list[tuple[float, np.ndarray]]]:
    """For each (job, test): its `cfg.candidates` most voted grids, each with its mean token log-likelihood
    averaged over the views (the grid mapped into the view, after that view's prompt), scored through
    the job's own adapter."""
    prompts, completions, rows, where = [], [], [], []
    for j in indices:
        for t in range(len(task.test)):
            for c, grid in enumerate(vote([g for _, g, _ in answers[(j, t)]], cfg.candidates)):
                for v in vs:
                    prompts.append(view_prompt(task, t, v, sep))
                    completions.append(answer_text(v.transform.apply(grid), sep))
                    rows.append(jobs[j][1])
                    where.append((j, t, c, grid))
    if not prompts:
        return {}
    adapter_rows = None if all(r is None for r in rows) else rows
    logps = completion_logprobs(lm, prompts, completions, batch_size=cfg.batch_size, precision=precision,
                                adapter_rows=adapter_rows, as_is=True)
    sums: dict[tuple[int, int, int], list] = {}
    for (j, t, c, grid), lp in zip(where, logps):
        sums.setdefault((j, t, c), [grid, []])[1].append(lp)
    out: dict[tuple[int, int], list] = {}
    for (j, t, _), (grid, lps) in sums.items():
        out.setdefault((j, t), []).append((sum(lps) / len(lps), grid))
    return out
