"""The comparison table on held-out passages (the conditions of the paper's Table 2).

Rows: the base model with no update; trained on the passage only; passage + the base model's
self-edits; passage + a teacher's self-edits; and for each SEAL round, that round's policy with no
update and with its own self-edits. Each (row, passage) is a record in the run, written as it finishes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path


from seal.config import Config
from seal.core.endpoint import ChatEndpoint, EndpointError
from seal.core.models import LoadedModel, load_model
from seal.core.progress import Progress
from seal.core.restem import EvalJob, evaluate_jobs, policy_rounds, record_samples, self_edit_writer
from seal.core.runs import Run
from seal.core.stats import bootstrap_ci
from seal.knowledge.data import Passage
from seal.knowledge.inner_loop import KnowledgeDomain, mean

# missing: passages left out of the row because their self-edit could not be written (an endpoint error)
COLUMNS = ["condition", "EM", "F1", "contains", "loglik", "judge", "questions", "missing", "reward", "95% CI"]


Writer = Callable[[list[Passage], int], list[dict]]  # (passages, seed) -> one sample record each


def _teacher_writer(config: Config, domain: KnowledgeDomain) -> Writer | None:
    """Writes one teacher self-edit per passage, or None when no teacher is set."""
    t = config.teacher
    if t.base_url:
        endpoint = ChatEndpoint(t.base_url, t.api_model, t.api_key_env, t.retries)

        def from_endpoint(passage: Passage) -> dict:
            prompt = domain.self_edit_prompt(passage)
            try:
                text = endpoint.complete(prompt, temperature=config.self_edit.temperature,
                                         max_tokens=config.self_edit.max_new_tokens)
                return dict(prompt=prompt, self_edits=[text], error=None)
            except EndpointError as err:  # missing, not bad: left out of the row, counted, retried on --resume
                return dict(prompt=prompt, self_edits=[], error=str(err))
        return lambda passages, seed: [from_endpoint(p) for p in passages]
    if t.model:
        return self_edit_writer(load_model(t.model, config.model.device), domain, 1, config)
    return None


def _condition(run: Run, lm: LoadedModel, domain: KnowledgeDomain, passages: list[Passage], name: str | None,
               model_row: str, progress: Progress, write: Writer | None) -> None:
    """Record the row `name` (or only `model_row` when name is None): for each passage the model's
    pre-update score, recorded once per model under its no-update row `model_row`, then an update on
    the passage only (write=None) or on the self-edit that `write` produces."""
    if name is not None and write is not None:
        record_samples(run, [(f"eval/samples/{name}/{p.id}", p, dict(condition=name, context_id=p.id)) for p in passages],
                       write, run.config.self_edit.batch_size, ("eval", name), progress)
    repeats = run.config.inner_loop.eval_times if name is not None else 1
    progress.start("eval", f"eval: {name or model_row}", len(passages) * repeats)
    jobs = []
    for passage in passages:
        pid = passage.id
        pre = run.cached("pre_update", f"eval/pre/{model_row}/{pid}", lambda: dict(
            condition=model_row, context_id=pid, **domain.pre_update(lm, passage)))
        if name is None:
            progress.advance("eval")
            continue
        sample = run.get(f"eval/samples/{name}/{pid}") if write is not None else None
        if sample is not None and sample.get("error"):
            progress.advance("eval", repeats)
            continue  # the writer failed (an endpoint error): no self-edit to evaluate
        text = sample["self_edits"][0] if sample is not None else None
        jobs.append(EvalJob(f"eval/eval/{name}/{pid}", passage, text, pre, ("eval", name, pid),
                            dict(condition=name, context_id=pid)))
    if jobs:
        evaluate_jobs(run, lm, domain, jobs, progress, bar="eval")


def conditions(config: Config, lm: LoadedModel, domain: KnowledgeDomain, policy_run: Path | None):
    """The table's rows in order, as (trained row or None, the no-update row of its model, self-edit
    writer or None for the passage alone). A SEAL round's rows come while `lm` is that round's policy.
    Shared by the single-passage table and CPT."""
    own = self_edit_writer(lm, domain, 1, config)  # follows lm as policy adapters are merged into it
    base = "base model, no update"
    yield None, base, None
    if config.eval.passage_only:
        yield "passage only", base, None
    if config.eval.base_self_edits:
        yield "passage + base self-edits", base, own
    teacher = _teacher_writer(config, domain)
    if teacher is not None:
        yield "passage + teacher self-edits", base, teacher
    if policy_run is not None:
        for r in policy_rounds(lm, policy_run):
            yield None, f"SEAL round {r}, no update", None
            yield f"passage + SEAL round {r} self-edits", f"SEAL round {r}, no update", own


def evaluate(run: Run, domain: KnowledgeDomain, passages: list[Passage], progress: Progress,
             policy_run: Path | None = None, lm: LoadedModel | None = None) -> list[dict]:
    """Evaluate every condition on the held-out passages and return the table rows."""
    lm = lm or load_model(run.config.model.name, run.config.model.device)
    for name, model_row, write in conditions(run.config, lm, domain, policy_run):
        _condition(run, lm, domain, passages, name, model_row, progress, write)
    return table_rows(run, run.config)


def table_rows(run: Run, config: Config) -> list[dict]:
    """Aggregate the run's eval records into one row per condition (in the order they were run).

    A no-update row is made of pre-update scores, a trained row of self-edit evaluations; repeats of
    one self-edit (eval_times) are averaged within the passage first.
    """
    rows: dict[str, dict] = {}
    for record in run.records():
        if record["key"].startswith("eval/samples/") and record.get("error"):
            rows.setdefault(record["condition"], {"grades": {}, "rewards": {}, "questions": {}, "missing": 0})
            rows[record["condition"]]["missing"] += 1
        if not record["key"].startswith(("eval/pre/", "eval/eval/")):
            continue
        row = rows.setdefault(record["condition"], {"grades": {}, "rewards": {}, "questions": {}, "missing": 0})
        pid = record["context_id"]
        row["rewards"].setdefault(pid, []).append(record["reward"])
        row["questions"][pid] = len(record["answers"])
        for metric, values in record["grades"].items():
            row["grades"].setdefault(metric, []).extend(values)
    out = []
    for name, row in rows.items():
        # A passage whose every answer went ungraded (a failed judge) is left out, not counted as 0.
        per_passage = [m for m in map(mean, row["rewards"].values()) if m is not None]
        low, high = bootstrap_ci(per_passage, config.eval.bootstrap, config.seed)
        g = row["grades"]
        out.append({
            "condition": name,
            "EM": mean(g.get("em", [])), "F1": mean(g.get("f1", [])), "contains": mean(g.get("contains", [])),
            "loglik": mean(g.get("loglik", [])), "judge": mean(g.get("judge", [])),
            "questions": sum(row["questions"].values()), "missing": row["missing"],
            "reward": mean(per_passage), "95% CI": (low, high),
        })
    return out


def _fmt(value, column: str) -> str:
    if value is None:
        return "-"
    if column == "95% CI":
        return "-" if math.isnan(value[0]) else f"[{value[0]:.3f}, {value[1]:.3f}]"
    if column in ("questions", "missing"):
        return str(value)
    if column == "condition":
        return value
    return f"{value:.3f}"


def markdown_table(rows: list[dict], config: Config) -> str:
    head = [c if c != "reward" else f"reward ({config.reward.metric})" for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c], c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def write_table(run: Run, rows: list[dict]) -> str:
    md = markdown_table(rows, run.config)
    (run.path / "table.md").write_text(md + "\n", encoding="utf-8")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS[:-1] + ["ci_low", "ci_high"])
    for row in rows:
        writer.writerow([row[c] for c in COLUMNS[:-1]] + list(row["95% CI"]))
    (run.path / "table.csv").write_text(buf.getvalue(), encoding="utf-8")
    return md
