"""The ARC baseline table on evaluation tasks (the conditions of the paper's Table 1).

Rows: in-context learning with no TTT; TTT with the base model's own self-edits (no RL); TTT with one
fixed hand-made configuration (oracle); and for each SEAL round, that policy without TTT and TTT with
its self-edits. A row's success is the share of (task, self-edit) pairs whose task was solved, with a
95% bootstrap interval over tasks; pass@k is the share of tasks solved by any of their k self-edits.
Every (row, task, self-edit) is a record in the run, written as it finishes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from seal.arc.config import ArcConfig
from seal.arc.inner_loop import ArcDomain
from seal.arc.tasks import Task
from seal.core.models import LoadedModel, load_model
from seal.core.progress import Progress
from seal.core.restem import EvalJob, evaluate_jobs, policy_rounds, record_samples, self_edit_writer
from seal.core.runs import Run
from seal.core.stats import bootstrap_ci

COLUMNS = ["condition", "tasks", "pairs", "success", "95% CI", "pass@k", "valid self-edits"]
ICL, BASE, ORACLE = "ICL, no TTT", "TTT + base self-edits (no RL)", "TTT + oracle configuration"


def _icl(run: Run, lm: LoadedModel, domain: ArcDomain, tasks: list[Task], row: str, progress: Progress) -> dict:
    progress.start("eval", f"eval: {row}", len(tasks))
    pres = {}
    for task in tasks:
        pres[task.id] = run.cached("pre_update", f"eval/pre/{row}/{task.id}", lambda: dict(
            condition=row, context_id=task.id, **domain.pre_update(lm, task)))
        progress.advance("eval")
    return pres


def _ttt(run: Run, lm: LoadedModel, domain: ArcDomain, tasks: list[Task], row: str, pres: dict,
         progress: Progress, n: int, fixed: str | None = None) -> None:
    """The row `row`: TTT on each task with n self-edits written by `lm` (or the one `fixed` text)."""
    cfg = run.config
    if fixed is None:
        record_samples(run, [(f"eval/samples/{row}/{t.id}", t, dict(condition=row, context_id=t.id)) for t in tasks],
                       self_edit_writer(lm, domain, n, cfg), max(1, cfg.self_edit.batch_size // n), ("eval", row), progress)
    jobs = []
    for task in tasks:
        texts = [fixed] if fixed is not None else run.get(f"eval/samples/{row}/{task.id}")["self_edits"]
        for i, text in enumerate(texts):
            jobs.append(EvalJob(f"eval/eval/{row}/{task.id}/{i}", task, text, pres[task.id], ("eval", row, task.id, i),
                                dict(condition=row, context_id=task.id, sample=i)))
    progress.start("eval", f"eval: {row}", len(jobs) * cfg.inner_loop.eval_times)
    evaluate_jobs(run, lm, domain, jobs, progress, bar="eval")


def evaluate(run: Run, domain: ArcDomain, tasks: list[Task], progress: Progress,
             policy_run: Path | None = None, lm: LoadedModel | None = None) -> list[dict]:
    """Every condition on the evaluation tasks; returns the table rows."""
    cfg: ArcConfig = run.config
    lm = lm or load_model(cfg.model.name, cfg.model.device)
    n = cfg.eval.n_self_edits
    pres = _icl(run, lm, domain, tasks, ICL, progress)  # also each TTT row's pre-update score
    if cfg.eval.base_self_edits:
        _ttt(run, lm, domain, tasks, BASE, pres, progress, n)
    if cfg.eval.oracle:
        _ttt(run, lm, domain, tasks, ORACLE, pres, progress, 1, fixed=json.dumps(cfg.eval.oracle_config))
    if policy_run is not None:
        for r in policy_rounds(lm, policy_run):
            own = _icl(run, lm, domain, tasks, f"SEAL round {r}, ICL no TTT", progress)
            _ttt(run, lm, domain, tasks, f"TTT + SEAL round {r} self-edits", own, progress, n)
    return table_rows(run, cfg)


def table_rows(run: Run, config: ArcConfig) -> list[dict]:
    rows: dict[str, dict] = {}
    for record in run.records():
        if not record["key"].startswith(("eval/pre/", "eval/eval/")):
            continue
        row = rows.setdefault(record["condition"], {"tasks": {}, "valid": []})
        row["tasks"].setdefault(record["context_id"], []).append(record["reward"])
        if "valid" in record:
            row["valid"].append(bool(record["valid"]))
    out = []
    for name, row in rows.items():
        per_task = [sum(v) / len(v) for v in row["tasks"].values()]
        pairs = sum(len(v) for v in row["tasks"].values())
        out.append({
            "condition": name, "tasks": len(per_task), "pairs": pairs,
            "success": sum(sum(v) for v in row["tasks"].values()) / pairs,
            "95% CI": bootstrap_ci(per_task, config.eval.bootstrap, config.seed),
            "pass@k": sum(any(r >= 1 for r in v) for v in row["tasks"].values()) / len(per_task),
            "valid self-edits": sum(row["valid"]) / len(row["valid"]) if row["valid"] else None,
            "per_task": row["tasks"],
        })
    return out


def _fmt(value, column: str) -> str:
    if value is None:
        return "-"
    if column == "95% CI":
        return "-" if math.isnan(value[0]) else f"[{value[0]:.2f}, {value[1]:.2f}]"
    if column in ("condition", "tasks", "pairs"):
        return str(value)
    return f"{value:.2f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_fmt(row[c], c) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def task_table(rows: list[dict]) -> str:
    """Tasks down, conditions across: solved pairs / pairs."""
    tasks = list(dict.fromkeys(t for row in rows for t in row["per_task"]))
    lines = ["| task | " + " | ".join(r["condition"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for t in tasks:
        cells = [f"{int(sum(v))}/{len(v)}" if (v := r["per_task"].get(t)) else "-" for r in rows]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(run: Run, rows: list[dict]) -> str:
    md = markdown_table(rows)
    (run.path / "table.md").write_text(md + "\n\n" + task_table(rows) + "\n", encoding="utf-8")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([c for c in COLUMNS if c != "95% CI"] + ["ci_low", "ci_high"])
    for row in rows:
        writer.writerow([row[c] for c in COLUMNS if c != "95% CI"] + list(row["95% CI"]))
    (run.path / "table.csv").write_text(buf.getvalue(), encoding="utf-8")
    return md
