"""`seal arc choices`: what a ReST-EM round's self-edits chose, and which of them solved their task.

An ARC self-edit is a TTT configuration (augmentations, loss strategy, learning rate, epochs). Every
evaluation record of a round's E-step carries the parsed configuration, whether it was usable and its
reward, so two tables come from the records alone: by task (how many of its k self-edits were usable
and how many solved it) and by choice (for each value a usable self-edit gave a field, how many gave it
and how many of those solved their task). They show which configurations the M-step keeps.

A self-edit trained several times (`inner_loop.eval_times`) counts as its mean reward over the trainings.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict

from seal.core.errors import ConfigError
from seal.core.runs import Run
from seal.core.tables import Column, Table

FIELDS = {"basic": "basic augmentations", "size": "size augmentations", "chain": "chain augmentations",
          "repeat": "repeat augmentations", "strategy": "loss on", "lr": "learning rate", "epochs": "epochs"}


def round_self_edits(run: Run, round_: int) -> list[dict]:
    """One entry per self-edit of the round's E-step: task, usable, recipe (None when unusable) and
    solved (its mean reward over its trainings)."""
    rewards: dict[tuple, list[float]] = defaultdict(list)
    first: dict[tuple, dict] = {}
    for record in run.records("self_edit_eval"):
        if not re.match(rf"^round{round_}/eval/", record["key"]) or record.get("reward") is None:
            continue
        key = (record["context_id"], record["sample"])
        rewards[key].append(record["reward"])
        first.setdefault(key, record)
    return [dict(task=task, usable=bool(r.get("valid", True)), recipe=r.get("recipe") if r.get("valid", True) else None,
                 solved=statistics.fmean(rewards[(task, sample)]))
            for (task, sample), r in first.items()]


def _count(values: list[float]) -> str:
    """How many solved: a whole number, or the sum of the self-edits' success rates when some were
    trained more than once and solved only some of the times."""
    total = sum(values)
    return str(int(total)) if float(total).is_integer() else f"{total:.2f}"


def by_task(self_edits: list[dict]) -> Table:
    rows: dict[str, dict] = {}
    for s in self_edits:
        row = rows.setdefault(s["task"], {"task": s["task"], "self-edits": 0, "usable": 0, "solved": []})
        row["self-edits"] += 1
        row["usable"] += s["usable"]
        row["solved"].append(s["solved"])
    total = {"task": "all", "self-edits": sum(r["self-edits"] for r in rows.values()),
             "usable": sum(r["usable"] for r in rows.values()), "solved": [x for r in rows.values() for x in r["solved"]]}
    out = [dict(r, solved=_count(r["solved"]), kind="self-edits", round=None) for r in [*rows.values(), total]]
    columns = [Column("task", kind="text"), Column("self-edits", kind="int"), Column("usable", kind="int"),
               Column("solved", "solved it", kind="text")]
    return Table(columns, out, "solved", "self-edits that solved their task")


def by_choice(self_edits: list[dict]) -> Table:
    """One row per (field, value) among the usable self-edits, fields in the prompt's order and values by
    how many chose them."""
    usable = [s for s in self_edits if s["recipe"] is not None]
    rows = []
    for field, name in FIELDS.items():
        groups: dict[str, list[float]] = defaultdict(list)
        for s in usable:
            value = s["recipe"].get(field)
            groups[f"{value:g}" if isinstance(value, float) else str(value).lower()].append(s["solved"])
        for value, solved in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            rows.append({"choice": name, "value": value, "usable": len(solved), "solved": _count(solved),
                         "share": sum(solved) / len(solved), "kind": "self-edits", "round": None})
    columns = [Column("choice", kind="text"), Column("value", kind="text"), Column("usable", "usable self-edits", kind="int"),
               Column("solved", "solved their task", kind="text"), Column("share", "share solving", digits=2)]
    return Table(columns, rows, "share", "share of the usable self-edits solving their task")


def choices(run: Run, round_: int = 1) -> tuple[Table, Table]:
    """(by task, by choice) of the round's E-step; a one-line error when the run recorded none."""
    self_edits = round_self_edits(run, round_)
    if not self_edits:
        found = sorted({int(m.group(1)) for r in run.records("self_edit_eval") if (m := re.match(r"^round(\d+)/eval/", r["key"]))})
        raise ConfigError(f"{run.path}: no evaluated self-edits of round {round_} (rounds recorded: "
                         f"{', '.join(map(str, found)) or 'none'})")
    return by_task(self_edits), by_choice(self_edits)
