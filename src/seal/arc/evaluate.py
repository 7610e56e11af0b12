"""The ARC baseline table on evaluation tasks (the conditions of the paper's Table 1).

Rows: in-context learning with no TTT; TTT with the base model's own self-edits (no RL); TTT with one
fixed hand-made configuration (oracle); and for each SEAL round, that policy without TTT and TTT with
its self-edits. A row's success is the share of (task, self-edit) pairs whose task was solved, with a
95% bootstrap interval over tasks; pass@k is the share of tasks solved by any of their k self-edits.
Every (row, task, self-edit) is a record in the run, written as it finishes, with the row's kind and
round (see core/tables.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from seal.arc.config import ArcConfig
from seal.arc.domain import ArcDomain
from seal.arc.predict import METHODS
from seal.arc.tasks import Task
from seal.core.distributed import load_run_model
from seal.core.models import LoadedModel
from seal.core.progress import Progress
from seal.core.restem import EvalJob, evaluate_jobs, policy_series, record_samples, record_scores, self_edit_writer
from seal.core.runs import Run
from seal.core.stats import bootstrap_ci, interval_note
from seal.core.tables import Column, Table

COLUMNS = [Column("condition", kind="text"), Column("tasks", kind="int"), Column("pairs", kind="int"),
           Column("success", digits=2), Column("95% CI", kind="ci", digits=2), Column("pass@k", digits=2),
           Column("valid self-edits", digits=2), *[Column(m, f"{m} vote", digits=2) for m in METHODS]]
SCORE_LABEL = "success rate (solved pairs)"
ICL, BASE, ORACLE = "ICL, no TTT", "TTT + base self-edits (no RL)", "TTT + oracle configuration"


def _icl(run: Run, lm: LoadedModel, domain: ArcDomain, tasks: list[Task], row: str, round_: int,
         progress: Progress) -> dict:
    progress.start("eval", f"eval: {row}", len(tasks))
    scores = record_scores(run, lm, domain, [(f"eval/pre/{row}/{t.id}", dict(condition=row, context_id=t.id, row="no-update",
                                              round=round_), "pre_update", (t,)) for t in tasks], progress, bar="eval")
    return {t.id: scores[f"eval/pre/{row}/{t.id}"] for t in tasks}


def _ttt(run: Run, lm: LoadedModel, domain: ArcDomain, tasks: list[Task], row: str, kind: str, round_: int | None,
         pres: dict, progress: Progress, n: int, fixed: str | None = None) -> None:
    """The row `row`: TTT on each task with n self-edits written by `lm` (or the one `fixed` text)."""
    cfg = run.config
    tags = lambda tid: dict(condition=row, context_id=tid, row=kind, round=round_)
    if fixed is None:
        record_samples(run, [(f"eval/samples/{row}/{t.id}", t, tags(t.id)) for t in tasks],
                       self_edit_writer(lm, domain, n, cfg), max(1, cfg.self_edit.batch_size // n), ("eval", row), progress)
    jobs = []
    for task in tasks:
        texts = [fixed] if fixed is not None else run.get(f"eval/samples/{row}/{task.id}")["self_edits"]
        for i, text in enumerate(texts):
            jobs.append(EvalJob(f"eval/eval/{row}/{task.id}/{i}", task, text, pres[task.id], ("eval", row, task.id, i),
                                dict(tags(task.id), sample=i), common_parts=("eval", task.id)))
    progress.start("eval", f"eval: {row}", len(jobs) * cfg.inner_loop.eval_times)
    evaluate_jobs(run, lm, domain, jobs, progress, bar="eval")


def evaluate(run: Run, domain: ArcDomain, tasks: list[Task], progress: Progress,
             policy_runs: list[Path] = (), lm: LoadedModel | None = None) -> Table:
    """Every condition on the evaluation tasks; returns the table."""
    cfg: ArcConfig = run.config
    lm = lm or load_run_model(cfg, progress.log)
    n = cfg.eval.n_self_edits
    pres = _icl(run, lm, domain, tasks, ICL, 0, progress)  # also each TTT row's pre-update score
    if cfg.eval.base_self_edits:
        _ttt(run, lm, domain, tasks, BASE, "self-edits", 0, pres, progress, n)
    if cfg.eval.oracle:
        _ttt(run, lm, domain, tasks, ORACLE, "oracle", None, pres, progress, 1, fixed=json.dumps(cfg.eval.oracle_config))
    for label, r in policy_series(lm, list(policy_runs)):
        which = f" ({label})" if label else ""
        own = _icl(run, lm, domain, tasks, f"SEAL round {r}{which}, ICL no TTT", r, progress)
        _ttt(run, lm, domain, tasks, f"TTT + SEAL round {r}{which} self-edits", "self-edits", r, own, progress, n)
    return table(run)


def table(run: Run) -> Table:
    """One row per condition: success over (task, self-edit) pairs with a bootstrap interval over tasks,
    pass@k, the share of usable self-edits, the success each prediction method would have had on the
    same adapters (predict.compare_methods; an unusable self-edit fails under all); then the per-task
    breakdown."""
    rows: dict[str, dict] = {}
    for record in run.records():
        if not record["key"].startswith(("eval/pre/", "eval/eval/")):
            continue
        row = rows.setdefault(record["condition"], {"tasks": {}, "valid": [], "kind": record.get("row"),
                                                     "round": record.get("round"), "by": {m: [] for m in METHODS}})
        by = record.get("solved_by") or ({} if record.get("valid", True) else {m: False for m in METHODS})
        for m, ok in by.items():
            row["by"][m].append(float(ok))
        row["tasks"].setdefault(record["context_id"], []).append(record["reward"])
        if "valid" in record:
            row["valid"].append(bool(record["valid"]))
    out = []
    for name, row in rows.items():
        per_task = [sum(v) / len(v) for v in row["tasks"].values()]
        pairs = sum(len(v) for v in row["tasks"].values())
        out.append({
            "condition": name, "kind": row["kind"], "round": row["round"], "tasks": len(per_task), "pairs": pairs,
            "success": sum(sum(v) for v in row["tasks"].values()) / pairs,
            "95% CI": bootstrap_ci(per_task, run.config.eval.bootstrap, run.config.seed),
            "pass@k": sum(any(r >= 1 for r in v) for v in row["tasks"].values()) / len(per_task),
            "valid self-edits": sum(row["valid"]) / len(row["valid"]) if row["valid"] else None,
            **{m: sum(v) / len(v) if len(v) == pairs else None for m, v in row["by"].items()},
            "per_task": row["tasks"],
        })
    units = max((r["tasks"] for r in out), default=0)
    return Table(COLUMNS, out, "success", SCORE_LABEL, extra=task_table(out) if out else "",
                 notes=[interval_note(units, "tasks")] if units else [])


def task_table(rows: list[dict]) -> str:
    """Tasks down, conditions across: solved pairs / pairs."""
    tasks = list(dict.fromkeys(t for row in rows for t in row["per_task"]))
    lines = ["| task | " + " | ".join(r["condition"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for t in tasks:
        cells = [f"{int(sum(v))}/{len(v)}" if (v := r["per_task"].get(t)) else "-" for r in rows]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
