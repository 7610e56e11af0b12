"""ARC self-edits: the model reads a task's demonstrations and writes its own TTT configuration as JSON.

`parse` holds the text to a schema with bounds. A text with no JSON object, or one with no known key,
is unusable (a recorded zero reward). Known keys with a wrong type are unusable too; missing keys
take the configured fallback and out-of-range numbers are clamped (or rejected), each recorded in
`notes`. Nothing the model writes reaches the trainer unchecked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from seal.arc.prompts import task_prompt
from seal.arc.tasks import Task
from seal.arc.ttt import Recipe

KEYS = {
    "use_basic_augmentations": "basic", "use_size_augmentations": "size",
    "use_chain_augmentations": "chain", "use_repeat_augmentations": "repeat",
    "strategy": "strategy", "learning_rate": "lr", "num_train_epochs": "epochs",
}
STRATEGIES = {"all": "all", "all_tokens": "all", "train_using_all_tokens": "all",
              "output": "outputs", "outputs": "outputs", "output_tokens": "outputs",
              "train_using_output_tokens": "outputs"}

INSTRUCTION = """You will be trained on this puzzle before you solve it. Choose how to train. Answer with one JSON object with these keys:
"use_basic_augmentations": true or false (also train on rotated, flipped, transposed, mirrored and shifted copies),
"use_size_augmentations": true or false (also train on copies scaled up 2x),
"use_chain_augmentations": true or false (also train on copies rotated and then scaled up),
"use_repeat_augmentations": true or false (also train on copies tiled 2x),
"strategy": "all" or "outputs" (learn from every token, or from the output grids only),
"learning_rate": a number between {lr_low} and {lr_high},
"num_train_epochs": a whole number between {ep_low} and {ep_high}."""


def prompt(task: Task, lr_range, epochs_range, sep: str = "") -> str:
    demos = task_prompt(list(task.train), task.test[0].input, sep).rsplit("input:\n", 1)[0]  # demonstrations only
    return ("Here are examples of a puzzle: each input grid of digits is turned into its output grid by "
            "the same rule.\n\n" + demos + "\n" +
            INSTRUCTION.format(lr_low=lr_range[0], lr_high=lr_range[1], ep_low=epochs_range[0], ep_high=epochs_range[1]))


@dataclass
class Parsed:
    recipe: Recipe | None
    problem: str | None  # why it is unusable; None when usable
    notes: list[str]

    def as_dict(self) -> dict:
        r = self.recipe
        return dict(problem=self.problem, notes=self.notes,
                    recipe=None if r is None else dict(basic=r.basic, size=r.size, chain=r.chain, repeat=r.repeat,
                                                       strategy=r.strategy, lr=r.lr, epochs=r.epochs))


def _first_object(text: str) -> str | None:
    """The first balanced {...} in text (model output often wraps JSON in prose or code fences)."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                esc, in_str = (not esc and ch == "\\"), in_str and (esc or ch != '"')
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
        start = text.find("{", start + 1)
    return None


def _loads(obj: str) -> dict | None:
    for attempt in (obj, _relaxed(obj)):
        try:
            value = json.loads(attempt)
            return value if isinstance(value, dict) else None
        except json.JSONDecodeError:
            continue
    return None


def _relaxed(obj: str) -> str:
    """Common near-JSON: single quotes, Python booleans, trailing commas."""
    obj = obj.replace("'", '"')
    obj = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", obj))
    return re.sub(r",\s*([}\]])", r"\1", obj)


def _bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "yes", "no"):
        return v.strip().lower() in ("true", "yes")
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    raise ValueError


def _number(v, kind):
    if isinstance(v, bool):
        raise ValueError
    x = float(v)  # numbers and numeric strings ("1e-4")
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError
    if kind is int:
        if x != int(x):
            raise ValueError
        return int(x)
    return x


def parse(text: str | None, fallback: Recipe, lr_range, epochs_range, out_of_range: str = "clamp") -> Parsed:
    """The recipe a self-edit text asks for, held to the schema and the bounds."""
    if text is None:
        return Parsed(None, "no self-edit", [])
    obj = _first_object(text)
    data = _loads(obj) if obj else None
    if data is None:
        return Parsed(None, "no JSON object" if obj is None else "JSON does not parse", [])
    known = {k: v for k, v in data.items() if k in KEYS}
    if not known:
        return Parsed(None, f"no known key (got {sorted(data)[:8]})", [])
    notes = [f"unknown key {k!r} ignored" for k in data if k not in KEYS]
    values = dict(basic=fallback.basic, size=fallback.size, chain=fallback.chain, repeat=fallback.repeat,
                  strategy=fallback.strategy, lr=fallback.lr, epochs=fallback.epochs)
    for key, field in KEYS.items():
        if key not in data:
            notes.append(f"{key} missing: {values[field]!r} used")
            continue
        raw = data[key]
        try:
            if field == "strategy":
                if not isinstance(raw, str) or raw.strip().lower() not in STRATEGIES:
                    raise ValueError
                values[field] = STRATEGIES[raw.strip().lower()]
            elif field in ("lr", "epochs"):
                x = _number(raw, int if field == "epochs" else float)
                low, high = lr_range if field == "lr" else epochs_range
                if not low <= x <= high:
                    if out_of_range == "reject":
                        return Parsed(None, f"{key} = {raw!r} outside [{low}, {high}]", notes)
                    x = min(max(x, low), high)
                    notes.append(f"{key} = {raw!r} clamped to {x}")
                values[field] = x
            else:
                values[field] = _bool(raw)
        except (ValueError, TypeError):
            return Parsed(None, f"{key} = {raw!r} is not a valid value", notes)
    return Parsed(Recipe(**values), None, notes)
