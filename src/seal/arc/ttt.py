"""Test-time training data: tasks built from a task's own demonstrations.

Leave-one-out: each demonstration in turn plays the test, the others stay demonstrations (and with
leave_two_out, one more is dropped). Each such task is also seen through the augmentations the
self-edit switched on, with its colours permuted (background kept) and its demonstrations
reordered. Duplicates are removed and a seeded sample of at most max_examples is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from seal.arc.augment import FAMILIES, fits, random_colour_map
from seal.arc.prompts import answer_text, task_prompt
from seal.arc.tasks import Example, Task
from seal.core.examples import Example as TrainExample


@dataclass(frozen=True)
class LeaveOut:
    """A training task made from demonstrations: `demos` shown, `held` to be answered."""

    demos: tuple[Example, ...]
    held: Example
    source: str = ""  # how it was made, e.g. "loo2|rot90|colours..."

    def text_key(self) -> str:
        return task_prompt(list(self.demos), self.held.input) + answer_text(self.held.output)


def leave_out(task: Task, leave_two_out: bool = False) -> list[LeaveOut]:
    """Demonstration i held out as the test of a task made of the others; never its own demonstration."""
    train = list(task.train)
    out = []
    for i, held in enumerate(train):
        rest = train[:i] + train[i + 1:]
        if rest:
            out.append(LeaveOut(tuple(rest), held, f"loo{i}"))
        if leave_two_out and len(rest) >= 2:
            for j in range(len(rest)):
                out.append(LeaveOut(tuple(rest[:j] + rest[j + 1:]), held, f"l2o{i}-{j}"))
    return out


@dataclass
class Recipe:
    """What a self-edit chose (after parsing and bounds)."""

    basic: bool = True
    size: bool = False
    chain: bool = False
    repeat: bool = False
    strategy: str = "outputs"  # "outputs": loss on the answer grid only; "all": on every token
    lr: float = 1e-3
    epochs: int = 2


@dataclass
class TTTSet:
    items: list[LeaveOut]
    made: int        # before deduplication and the cap
    duplicates: int
    too_large: int   # a transform made a grid larger than 30x30
    lossy: int = 0   # a translation would have pushed a grid's content off its edge


def build(task: Task, recipe: Recipe, *, seed: int, leave_two_out: bool, colour_permutations: int,
          example_permutations: int, max_examples: int) -> TTTSet:
    rng = np.random.default_rng(seed)
    transforms = [t for name, ts in FAMILIES.items() if getattr(recipe, name) for t in ts]
    made, too_large, lossy = [], 0, 0
    for base in leave_out(task, leave_two_out):
        variants = [base]
        for t in transforms:
            if not all(t.keeps(g) for e in base.demos + (base.held,) for g in (e.input, e.output)):
                lossy += 1  # a translation would push some grid's content off its edge
                continue
            mapped = LeaveOut(tuple(e.map(t) for e in base.demos), base.held.map(t), f"{base.source}|{t.name}")
            if all(fits(g) for e in mapped.demos + (mapped.held,) for g in (e.input, e.output)):
                variants.append(mapped)
            else:
                too_large += 1
        for v in list(variants):
            for _ in range(colour_permutations):
                c = random_colour_map(rng)
                variants.append(LeaveOut(tuple(e.map(c) for e in v.demos), v.held.map(c), f"{v.source}|{c.name}"))
        for v in list(variants):
            for order in _reorderings(len(v.demos), example_permutations, rng):
                variants.append(LeaveOut(tuple(v.demos[i] for i in order), v.held, f"{v.source}|order{order}"))
        made += variants
    unique, seen = [], set()
    for item in made:
        key = item.text_key()
        if key not in seen:
            seen.add(key)
            unique.append(item)
    keep = sorted(rng.permutation(len(unique))[:max_examples].tolist())
    return TTTSet([unique[i] for i in keep], len(made), len(made) - len(unique), too_large, lossy)


def _reorderings(n: int, count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """`count` distinct orders of n demonstrations other than the given one: drawn from all of them
    while n! is small, else sampled (ARC tasks have up to 10 demonstrations: 3.6M orders)."""
    if n < 2 or count == 0:
        return []
    if n <= 7:
        orders = [p for p in permutations(range(n)) if list(p) != sorted(p)]
        return [orders[k] for k in rng.permutation(len(orders))[:count]]
    out: list[tuple[int, ...]] = []
    while len(out) < count:
        p = tuple(int(i) for i in rng.permutation(n))
        if p != tuple(range(n)) and p not in out:
            out.append(p)
    return out


def examples(tokenizer, items: list[LeaveOut], strategy: str, end_marker: bool,
             max_len: int, sep: str = "") -> tuple[list[TrainExample], int]:
    """Token examples of TTT items; returns them and how many were dropped as longer than max_len
    (a cut example would train on a grid without its end)."""
    out, dropped = [], 0
    end = [tokenizer.eos_token_id] if end_marker else []
    for item in items:
        p = tokenizer(task_prompt(list(item.demos), item.held.input, sep), add_special_tokens=False)["input_ids"]
        a = tokenizer(answer_text(item.held.output, sep), add_special_tokens=False)["input_ids"] + end
        if len(p) + len(a) > max_len:
            dropped += 1
            continue
        labels = list(p) + a if strategy == "all" else [-100] * len(p) + a
        out.append(TrainExample(p + a, labels))
    return out, dropped
