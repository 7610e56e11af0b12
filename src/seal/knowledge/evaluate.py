"""The comparison table on held-out passages (the conditions of the paper's Table 2).

Rows: the base model with no update; trained on the passage only; passage + the base model's
self-edits; passage + a teacher's self-edits; and for each SEAL round, that round's policy with no
update, trained on the passage alone (`eval.policy_passage_only`), and with its own self-edits.
Each (row, passage) is a record in the run, written as it finishes, carrying the row's kind and round
(see core/tables.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seal.core.distributed import load_run_model
from seal.core.endpoint import ChatEndpoint, EndpointError
from seal.core.models import LoadedModel, load_model
from seal.core.progress import Progress
from seal.core.restem import EvalJob, evaluate_jobs, policy_series, record_samples, record_scores, self_edit_writer
from seal.core.runs import Run
from seal.core.stats import bootstrap_ci, mean, paired_difference
from seal.core.tables import Column, Table
from seal.knowledge.config import KnowledgeConfig
from seal.knowledge.data import Passage
from seal.knowledge.domain import KnowledgeDomain

# The rows every other row is compared with, passage by passage (paired differences of the reward).
REFERENCES = {"vs base": "base model, no update", "vs passage only": "passage only"}
OPEN_BOOK = "open book (passage in the prompt), no update"
OWN = "vs own passage only"


def columns(metric: str) -> list[Column]:
    """missing: passages left out of the row because their self-edit could not be written (an endpoint
    error); gap closed: (row - base) / (open book - base) of the mean rewards, the share of the way from
    the closed-book base model to the open-book ceiling; vs ...: the row's reward minus the reference
    row's, passage by passage (repeats averaged); vs own passage only: a self-edit row minus the
    passage-only row of the model that is trained (the base model's, or with eval.policy_passage_only
    its round's policy's): what the self-edits add, apart from what the model's weights bring."""
    return [Column("condition", kind="text"), Column("EM"), Column("F1"), Column("contains"), Column("loglik"),
            Column("judge"), Column("questions", kind="int"), Column("missing", kind="int"),
            Column("reward", f"reward ({metric})"), Column("95% CI", kind="ci"), Column("gap closed"),
            *[Column(key, f"{key} (paired, 95% CI)", kind="diff") for key in REFERENCES],
            Column(OWN, f"{OWN} (paired, 95% CI)", kind="diff")]


Writer = Callable[[list[Passage], int], list[dict]]  # (passages, seed) -> one sample record each


def _teacher_writer(config: KnowledgeConfig, domain: KnowledgeDomain) -> Writer | None:
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
        return self_edit_writer(load_model(t.model, config.model.device, config.model.dtype), domain, 1, config)
    return None


@dataclass
class Condition:
    """One row of the table: `name` (None: only the no-update row of its model, `model_row`), what is
    trained (`kind`), the round of the policy that wrote the self-edits (0: the base model; None:
    no round), and the self-edit writer (None: the passage alone)."""

    name: str | None
    kind: str
    round: int | None
    model_row: str
    model_round: int
    write: Writer | None = None
    open_book: bool = False  # the no-update row asks each question with its passage in the prompt
    policy: str = ""  # which restem run wrote the policy, when a table has several (see policy_series)


def _condition(run: Run, lm: LoadedModel, domain: KnowledgeDomain, passages: list[Passage], c: Condition,
               progress: Progress) -> None:
    """Record the row `c.name` (or only `c.model_row` when name is None): for each passage the model's
    pre-update score, recorded once per model under its no-update row, then an update on the passage
    only (write=None) or on the self-edit that `c.write` produces."""
    name, write = c.name, c.write
    tags = lambda pid: dict(condition=name, context_id=pid, row=c.kind, round=c.round, **policy_tag(c))
    if name is not None and write is not None:
        record_samples(run, [(f"eval/samples/{name}/{p.id}", p, tags(p.id)) for p in passages],
                       write, run.config.self_edit.batch_size, ("eval", name), progress)
    repeats = run.config.inner_loop.eval_times if name is not None else 1
    progress.start("eval", f"eval: {name or c.model_row}", len(passages) * repeats)
    pre_key = lambda pid: f"eval/pre/{c.model_row}/{pid}"
    pres = record_scores(run, lm, domain, [
        (pre_key(p.id), dict(condition=c.model_row, context_id=p.id, **no_update_tags(c), **policy_tag(c)),
         "score", (p, c.open_book)) for p in passages], progress if name is None else None, bar="eval")
    if name is None:
        return
    jobs = []
    for passage in passages:
        pid = passage.id
        pre = pres[pre_key(pid)]
        sample = run.get(f"eval/samples/{name}/{pid}") if write is not None else None
        if sample is not None and sample.get("error"):
            progress.skip("eval", repeats)
            continue  # the writer failed (an endpoint error): no self-edit to evaluate
        text = sample["self_edits"][0] if sample is not None else None
        jobs.append(EvalJob(f"eval/eval/{name}/{pid}", passage, text, pre, ("eval", name, pid), tags(pid),
                            common_parts=("eval", pid)))
    if jobs:
        evaluate_jobs(run, lm, domain, jobs, progress, bar="eval")


def policy_tag(c: Condition) -> dict:
    return dict(policy=c.policy) if c.policy else {}


def no_update_tags(c: Condition) -> dict:
    """The kind and round recorded with a no-update row's scores."""
    return dict(row="open-book", round=None) if c.open_book else dict(row="no-update", round=c.model_round)


def conditions(config: KnowledgeConfig, lm: LoadedModel, domain: KnowledgeDomain, policy_runs: list[Path] = ()):
    """The table's rows in order. A SEAL round's rows come while `lm` is that round's policy. Shared by
    the single-passage table and CPT."""
    own = self_edit_writer(lm, domain, 1, config)  # follows lm as policy adapters are merged into it
    base = "base model, no update"
    yield Condition(None, "no-update", 0, base, 0)
    if config.eval.open_book:
        yield Condition(None, "open-book", None, OPEN_BOOK, 0, open_book=True)
    if config.eval.passage_only:
        yield Condition("passage only", "passage", None, base, 0)
    if config.eval.base_self_edits:
        yield Condition("passage + base self-edits", "self-edits", 0, base, 0, own)
    for style in config.eval.more_prompts:  # no round: these rows are not the policy's own style
        yield Condition(f"passage + base self-edits ({style})", "self-edits", None, base, 0,
                        self_edit_writer(lm, domain.with_prompt(style), 1, config))
    teacher = _teacher_writer(config, domain)
    if teacher is not None:
        yield Condition("passage + teacher self-edits", "teacher", None, base, 0, teacher)
    for label, r in policy_series(lm, list(policy_runs), config.eval.policy_rounds):
        which = f" ({label})" if label else ""
        no_update = f"SEAL round {r}{which}, no update"
        yield Condition(None, "no-update", r, no_update, r, policy=label)
        if config.eval.policy_passage_only:
            yield Condition(f"SEAL round {r}{which}, passage only", "passage", r, no_update, r, policy=label)
        yield Condition(f"passage + SEAL round {r}{which} self-edits", "self-edits", r, no_update, r, own, policy=label)


def evaluate(run: Run, domain: KnowledgeDomain, passages: list[Passage], progress: Progress,
             policy_runs: list[Path] = (), lm: LoadedModel | None = None) -> Table:
    """Evaluate every condition on the held-out passages (with the rounds of each restem run in
    `policy_runs`) and return the table."""
    lm = lm or load_run_model(run.config, progress.log)
    for c in conditions(run.config, lm, domain, policy_runs):
        _condition(run, lm, domain, passages, c, progress)
    return table(run)


def table(run: Run) -> Table:
    """Aggregate the run's eval records into one row per condition (in the order they were run).

    A no-update row is made of pre-update scores, a trained row of self-edit evaluations; repeats of
    one self-edit (eval_times) are averaged within the passage first.
    """
    config = run.config
    rows: dict[str, dict] = {}
    new_row = lambda record: {"grades": {}, "rewards": {}, "questions": {}, "missing": 0,
                              "kind": record.get("row"), "round": record.get("round"), "policy": record.get("policy", "")}
    for record in run.records():
        if record["key"].startswith("eval/samples/") and record.get("error"):
            rows.setdefault(record["condition"], new_row(record))["missing"] += 1
        if not record["key"].startswith(("eval/pre/", "eval/eval/")):
            continue
        row = rows.setdefault(record["condition"], new_row(record))
        pid = record["context_id"]
        row["rewards"].setdefault(pid, []).append(record["reward"])
        row["questions"][pid] = len(record["answers"])
        for metric, values in record["grades"].items():
            row["grades"].setdefault(metric, []).extend(values)
    # A passage whose every answer went ungraded (a failed judge) is left out, not counted as 0.
    by_passage = {name: {pid: m for pid, rs in row["rewards"].items() if (m := mean(rs)) is not None}
                  for name, row in rows.items()}
    out = []
    for name, row in rows.items():
        per_passage = list(by_passage[name].values())
        g = row["grades"]
        out.append({
            "condition": name, "kind": row["kind"], "round": row["round"], "policy": row["policy"],
            "EM": mean(g.get("em", [])), "F1": mean(g.get("f1", [])), "contains": mean(g.get("contains", [])),
            "loglik": mean(g.get("loglik", [])), "judge": mean(g.get("judge", [])),
            "questions": sum(row["questions"].values()), "missing": row["missing"],
            "reward": mean(per_passage), "95% CI": bootstrap_ci(per_passage, config.eval.bootstrap, config.seed),
            **{key: paired_difference(by_passage[name], by_passage[ref], config.eval.bootstrap, config.seed)
               if ref in by_passage and ref != name else None
               for key, ref in {**REFERENCES, OWN: _own_passage_row(row, rows)}.items()},
        })
    base, ceiling = (next((r["reward"] for r in out if r["condition"] == name), None)
                     for name in ("base model, no update", OPEN_BOOK))
    for r in out:
        r["gap closed"] = (None if None in (base, ceiling, r["reward"]) or ceiling == base
                           else (r["reward"] - base) / (ceiling - base))
    shown = columns(config.reward.metric)
    if not any(r["kind"] == "passage" and r["round"] for r in out):  # no policy's passage-only row: the column
        shown = [c for c in shown if c.key != OWN]                    # would repeat "vs passage only"
    return Table(shown, out, "reward", score_label(config))


def _own_passage_row(row: dict, rows: dict[str, dict]) -> str | None:
    """The name of the passage-only row trained on the same model as a self-edit row: its round's
    policy's (same round and policy run), or the base model's for rows of round 0 or none."""
    if row["kind"] not in ("self-edits", "teacher"):
        return None
    policy_round = row["round"] or None
    return next((name for name, r in rows.items() if r["kind"] == "passage" and r["round"] == policy_round
                 and (r["policy"] == row["policy"] or policy_round is None)), None)


def score_label(config: KnowledgeConfig) -> str:
    metric = config.reward.metric
    return "gold-answer token probability (geometric mean, best gold)" if metric == "loglik" else f"{metric} (0-1)"
