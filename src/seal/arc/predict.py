"""Predicting a test output: greedy answers under several views of the task, mapped back, voted on.

A view is an invertible transform of the whole task plus an order of its demonstrations. Each view's
answer is parsed (a malformed one is simply a wrong answer), mapped back through the inverse
transform, and the most frequent grids become the attempts (pass@2 by default).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from seal.arc.augment import Dihedral
from seal.arc.grids import key, n_tokens, parse, to_text
from seal.arc.tasks import Task
from seal.arc.ttt import task_prompt
from seal.core.generation import generate
from seal.core.models import LoadedModel

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


def view_prompt(task: Task, test_index: int, view: View) -> str:
    t = view.transform
    demos = [task.train[i].map(t) for i in view.order]
    return task_prompt(demos, t.apply(task.test[test_index].input))


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


def solved(attempts: list[np.ndarray], target: np.ndarray | None) -> bool:
    return target is not None and any(a.shape == target.shape and np.array_equal(a, target) for a in attempts)


def answer_limit(task: Task, cap: int) -> int:
    """New tokens allowed for an answer: twice the largest grid of the task (outputs can grow), capped."""
    largest = max(n_tokens(g) for e in task.train + task.test for g in (e.input, e.output) if g is not None)
    return min(cap, 2 * largest + 4)


def predict(lm: LoadedModel, jobs: list[tuple[Task, int | None]], cfg, *, precision: str = "fp32",
            seed: int = 0) -> list[dict]:
    """For each (task, adapter) job (adapter: a row of the installed adapter bank, or None for the
    model as it is), attempts for every test input and whether they solve it. All views of one task's
    jobs are generated in shared batches."""
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
                    prompts.append(view_prompt(task, t, v))
                    rows.append(jobs[j][1])
                    where.append((j, t, v))
        adapter_rows = None if all(r is None for r in rows) else rows
        gens = generate(lm, prompts, max_new_tokens=answer_limit(task, cfg.max_new_tokens),
                        batch_size=cfg.batch_size, precision=precision, adapter_rows=adapter_rows)
        answers: dict[tuple[int, int], list] = {}
        for (j, t, v), gen in zip(where, gens):
            g = parse(gen.text)
            back = None if g is None else v.transform.inverse(g)
            answers.setdefault((j, t), []).append((v.name, back, gen.text))
        for j in indices:
            tests = []
            for t, example in enumerate(task.test):
                mine = answers[(j, t)]
                attempts = vote([g for _, g, _ in mine], cfg.attempts)
                tests.append(dict(solved=solved(attempts, example.output), attempts=[to_text(a) for a in attempts],
                                  well_formed=sum(g is not None for _, g, _ in mine), views=len(mine),
                                  raw={name: text[:RAW_CHARS] for name, _, text in mine}))
            out[j] = dict(solved=all(x["solved"] for x in tests), tests=tests)
    return out
