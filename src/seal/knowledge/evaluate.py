"""The comparison table on held-out passages (the conditions of the paper's Table 2).

Rows: the base model with no update; trained on the passage only; passage + the base model's
self-edits; passage + a teacher's self-edits; and for each SEAL round, that round's policy with no
update, trained on the passage alone (`eval.policy_passage_only`), and with its own self-edits.
Each (row, passage) is a record in the run, written as it finishes, carrying the row's kind and round
(see core/tables.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seal.core.curves import coverage, distinct_2
from seal.core.distributed import load_run_model
from seal.core.endpoint import ChatEndpoint, EndpointError
from seal.core.models import LoadedModel, load_model
from seal.core.progress import Progress
from seal.core.restem import EvalJob, evaluate_jobs, policy_series, record_samples, record_scores, self_edit_writer
from seal.core.runs import Run
from seal.core.stats import bootstrap_ci, interval_note, mean, paired_difference
from seal.core.tables import Column, Table
from seal.knowledge.config import KnowledgeConfig
from seal.knowledge.data import Passage
from seal.knowledge.domain import KnowledgeDomain

# The rows every other row is compared with, passage by passage (paired differences of the reward).
REFERENCES = {"vs base": "base model, no update", "vs passage only": "passage only"}
OPEN_BOOK = "open book (passage in the prompt), no update"
OWN = "vs own passage only"
VS_BASE_SELF_EDITS = "vs base self-edits"
VS_SENTENCES = "vs passage sentences"
DISCRIM_VS_BASE = "discrim vs base"
VS_BEST_LM = "vs best lm row"
VS_RECIPE = "vs table's recipe"
BASE = "base model, no update"


def columns(metric: str) -> list[Column]:
    """discrim: answer discrimination, the share of distractor spans of the passage that the best gold
    answer is more likely than (answer.distractors), which priming every token of the passage cannot
    raise; steps: optimiser steps per update (the step budget); first loss, last loss: the objective's loss
    at the first and the last step of an update (the KL to the teacher under distill), mean over updates;
    missing: passages left out of the row because their self-edit could not be written (an endpoint error); gap closed: (row - base) / (open
    book - base) of the mean rewards, the share of the way from the closed-book base model to the
    open-book ceiling (discrim gap closed: the same on discrimination); vs ...: the row's reward minus
    the reference row's, passage by passage (repeats averaged); vs own passage only: a self-edit row
    minus the passage-only row of the model that is trained (the base model's, or with
    eval.policy_passage_only its round's policy's) with the same objective: what the self-edits add;
    vs base self-edits: a SEAL round's self-edit row minus the base model's self-edit row with the same
    objective and recipe: what the outer loop learned; vs passage sentences: a self-edit row minus the
    passage-sentences row with the same objective and recipe: what a model-written self-edit adds over
    the rule-based baseline;
    distinct-2, passage coverage: of a row's self-edits (one a passage), the share of word bigrams that
    are distinct within the self-edit and the share of the passage's content words it uses (as the
    learning curve's columns), means over passages: a policy that collapses onto short or repetitive
    text shows here; discrim vs base: the paired difference on discrimination; vs best lm row: the reward minus that of
    the best trained row under the lm objective, when a table has several objectives; vs table's recipe: an
    eval.recipes row minus the same row under the table's own inner_loop (same objective).
    Printed only when --columns names them: row, the condition without its "[objective, recipe]"; objective;
    recipe, the eval.recipes entry it trains with ("table's": the table's own inner_loop), so that a
    recipe sweep reads as a table by objective and recipe."""
    return [Column("condition", kind="text"), Column("row", kind="text", hidden=True),
            Column("objective", kind="text", hidden=True), Column("recipe", kind="text", hidden=True),
            Column("EM"), Column("F1"), Column("contains"), Column("loglik"),
            Column("discrim"), Column("judge"), Column("questions", kind="int"), Column("missing", kind="int"),
            Column("steps", digits=1), Column("first loss"), Column("last loss"),
            Column("reward", f"reward ({metric})"), Column("95% CI", kind="ci"), Column("gap closed"),
            Column("discrim gap closed"), Column("distinct-2", digits=2), Column("coverage", "passage coverage", digits=2),
            *[Column(key, f"{key} (paired, 95% CI)", kind="diff") for key in REFERENCES],
            Column(OWN, f"{OWN} (paired, 95% CI)", kind="diff"),
            Column(VS_BASE_SELF_EDITS, f"{VS_BASE_SELF_EDITS} (paired, 95% CI)", kind="diff"),
            Column(VS_SENTENCES, f"{VS_SENTENCES} (paired, 95% CI)", kind="diff"),
            Column(DISCRIM_VS_BASE, f"{DISCRIM_VS_BASE} (paired, 95% CI)", kind="diff"),
            Column(VS_BEST_LM, f"{VS_BEST_LM} (paired, 95% CI)", kind="diff"),
            Column(VS_RECIPE, f"{VS_RECIPE} (paired, 95% CI)", kind="diff")]


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


def _cloze_writer(passages: list[Passage], seed: int) -> list[dict]:
    """The cloze writer's questions about each passage as a self-edit, one per line (no model)."""
    from seal.knowledge.questions import cloze_questions

    return [dict(prompt="cloze questions", self_edits=["\n".join(q.question for q in cloze_questions(p).questions)],
                 error=None) for p in passages]


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
    objective: str | None = None  # the update's objective (inner_loop.objective), for trained rows
    inner: dict = field(default_factory=dict)  # other inner-loop settings of this row (passage_items)
    recipe: str | None = None  # the eval.recipes entry whose inner-loop changes it trains with (None: the table's)
    samples: str | None = None  # the row whose self-edits it trains (its own when None): rows that differ
    #                             only by objective train the same self-edits


def _condition(run: Run, lm: LoadedModel, domain: KnowledgeDomain, passages: list[Passage], c: Condition,
               progress: Progress) -> None:
    """Record the row `c.name` (or only `c.model_row` when name is None): for each passage the model's
    pre-update score, recorded once per model under its no-update row, then an update on the passage
    only (write=None) or on the self-edit that `c.write` produces."""
    name, write = c.name, c.write
    changes = run.config.eval.recipes.get(c.recipe, {}) if c.recipe else {}
    trained = {**changes, **c.inner, **(dict(objective=c.objective) if c.objective else {})}  # the row's own win
    tags = lambda pid: dict(condition=name, context_id=pid, row=c.kind, round=c.round, **policy_tag(c),
                            **(dict(recipe=c.recipe) if c.recipe else {}))
    sampled = c.samples or name
    if name is not None and write is not None:
        record_samples(run, [(f"eval/samples/{sampled}/{p.id}", p, tags(p.id)) for p in passages],
                       write, run.config.self_edit.batch_size, ("eval", sampled), progress)
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
        sample = run.get(f"eval/samples/{sampled}/{pid}") if write is not None else None
        if sample is not None and sample.get("error"):
            progress.skip("eval", repeats)
            continue  # the writer failed (an endpoint error): no self-edit to evaluate
        text = sample["self_edits"][0] if sample is not None else None
        jobs.append(EvalJob(f"eval/eval/{name}/{pid}", passage, text, pre, ("eval", name, pid), tags(pid),
                            common_parts=("eval", pid)))
    if jobs:
        updating = domain.with_inner_loop(**trained) if trained else domain
        evaluate_jobs(run, lm, updating, jobs, progress, bar="eval")


def policy_tag(c: Condition) -> dict:
    return dict(policy=c.policy) if c.policy else {}


def no_update_tags(c: Condition) -> dict:
    """The kind and round recorded with a no-update row's scores."""
    return dict(row="open-book", round=None) if c.open_book else dict(row="no-update", round=c.model_round)


def conditions(config: KnowledgeConfig, lm: LoadedModel, domain: KnowledgeDomain, policy_runs: list[Path] = ()):
    """The table's rows in order. A SEAL round's rows come while `lm` is that round's policy. Every
    trained row comes once per objective of eval.objectives (the first's rows unnamed, the others' named
    "[objective]"), then once per eval.recipes entry ("[recipe]", or "[objective, recipe]" when the table
    has several objectives), all trained with the same seeds on the same passages and self-edits, so
    that they pair. Shared by the single-passage table and CPT."""
    own = self_edit_writer(lm, domain, 1, config)  # follows lm as policy adapters are merged into it
    objectives = config.eval.objectives or [config.inner_loop.objective]
    recipes = config.eval.recipes
    several = len({*objectives, *(r["objective"] for r in recipes.values() if "objective" in r)}) > 1
    variants = [(objective, None, objective if n else None) for n, objective in enumerate(objectives)]
    for recipe, changes in recipes.items():
        for objective in [changes["objective"]] if "objective" in changes else objectives:
            variants.append((objective, recipe, f"{objective}, {recipe}" if several else recipe))
    yield Condition(None, "no-update", 0, BASE, 0)
    if config.eval.open_book:
        yield Condition(None, "open-book", None, OPEN_BOOK, 0, open_book=True)

    def trained(name, kind, round_, model_row, model_round, write=None, inner=None, **kw):
        for objective, recipe, suffix in variants:
            yield Condition(f"{name} [{suffix}]" if suffix else name, kind, round_, model_row, model_round, write,
                            objective=objective, inner=inner or {}, samples=name, recipe=recipe, **kw)

    if config.eval.passage_only:
        yield from trained("passage only", "passage", None, BASE, 0)
    if config.eval.passage_sentences:
        yield from trained("passage sentences", "sentences", None, BASE, 0, inner=dict(passage_items="sentences"))
    if config.eval.base_self_edits:
        yield from trained("passage + base self-edits", "self-edits", 0, BASE, 0, own)
    for style in config.eval.more_prompts:  # no round: these rows are not the policy's own style
        yield from trained(f"passage + base self-edits ({style})", "self-edits", None, BASE, 0,
                           self_edit_writer(lm, domain.with_prompt(style), 1, config))
    if config.eval.probes:
        probing = dict(self_edit_items="probes")
        yield from trained("passage + base probes", "probes", 0, BASE, 0,
                           self_edit_writer(lm, domain.with_prompt("probes"), 1, config), inner=probing)
        yield from trained("passage + cloze probes", "probes", None, BASE, 0, _cloze_writer, inner=probing)
    teacher = _teacher_writer(config, domain)
    if teacher is not None:
        yield from trained("passage + teacher self-edits", "teacher", None, BASE, 0, teacher)
    for label, r in policy_series(lm, list(policy_runs), config.eval.policy_rounds):
        which = f" ({label})" if label else ""
        no_update = f"SEAL round {r}{which}, no update"
        yield Condition(None, "no-update", r, no_update, r, policy=label)
        if config.eval.policy_passage_only:
            yield from trained(f"SEAL round {r}{which}, passage only", "passage", r, no_update, r, policy=label)
        yield from trained(f"passage + SEAL round {r}{which} self-edits", "self-edits", r, no_update, r, own, policy=label)


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
    new_row = lambda record: {"grades": {}, "rewards": {}, "discrim": {}, "questions": {}, "missing": 0, "steps": [],
                              "first": [], "last": [], "texts": {},
                              "kind": record.get("row"), "round": record.get("round"), "policy": record.get("policy", ""),
                              "objective": (record.get("objective") or {}).get("name"), "recipe": record.get("recipe")}
    for record in run.records():
        if record["key"].startswith("eval/samples/") and record.get("error"):
            rows.setdefault(record["condition"], new_row(record))["missing"] += 1
        if not record["key"].startswith(("eval/pre/", "eval/eval/")):
            continue
        row = rows.setdefault(record["condition"], new_row(record))
        pid = record["context_id"]
        row["rewards"].setdefault(pid, []).append(record["reward"])
        row["discrim"].setdefault(pid, []).append(mean(record["grades"].get("discrimination", [])))
        row["questions"][pid] = len(record["answers"])
        if record.get("self_edit"):  # the self-edit this update trained on
            row["texts"][pid] = record["self_edit"]
        if record.get("train"):
            row["steps"].append(record["train"]["steps"])
            row["first"].append(record["train"]["first_loss"])
            row["last"].append(record["train"]["last_loss"])
        for metric, values in record["grades"].items():
            row["grades"].setdefault(metric, []).extend(values)
    # A passage whose every answer went ungraded (a failed judge) is left out, not counted as 0.
    per = lambda field: {name: {pid: m for pid, vs in row[field].items() if (m := mean(vs)) is not None}
                         for name, row in rows.items()}
    by_passage, discrim = per("rewards"), per("discrim")
    pair = lambda values, name, ref: (paired_difference(values[name], values[ref], config.eval.bootstrap, config.seed)
                                      if ref in values and ref != name else None)
    lm_rows = [name for name, row in rows.items() if row["objective"] == "lm" and row["kind"] != "no-update"]
    several = len({row["objective"] for row in rows.values() if row["objective"]}) > 1
    best_lm = max(lm_rows, key=lambda n: mean(by_passage[n].values()) or 0.0, default=None) if several else None
    passages = _passage_texts(config) if any(row["texts"] for row in rows.values()) else {}
    out = []
    for name, row in rows.items():
        per_passage = list(by_passage[name].values())
        texts = row["texts"]
        g = row["grades"]
        out.append({
            "condition": name, "kind": row["kind"], "round": row["round"], "policy": row["policy"],
            "objective": row["objective"], "row": row_name(name),
            "recipe": row["recipe"] or ("table's" if row["objective"] else None),
            "EM": mean(g.get("em", [])), "F1": mean(g.get("f1", [])), "contains": mean(g.get("contains", [])),
            "loglik": mean(g.get("loglik", [])), "discrim": mean(g.get("discrimination", [])),
            "judge": mean(g.get("judge", [])),
            "distinct-2": mean(distinct_2([t]) for t in texts.values()),
            "coverage": mean(coverage([t], passages[pid]) for pid, t in texts.items() if pid in passages),
            "questions": sum(row["questions"].values()), "missing": row["missing"], "steps": mean(row["steps"]),
            "first loss": mean(row["first"]), "last loss": mean(row["last"]),
            "reward": mean(per_passage), "95% CI": bootstrap_ci(per_passage, config.eval.bootstrap, config.seed),
            **{key: pair(by_passage, name, ref) for key, ref in {**REFERENCES, OWN: _own_passage_row(row, rows)}.items()},
            VS_BASE_SELF_EDITS: pair(by_passage, name, _same_update_row(row, rows, "self-edits", 0)) if row["round"] else None,
            VS_SENTENCES: pair(by_passage, name, _same_update_row(row, rows, "sentences", None)),
            DISCRIM_VS_BASE: pair(discrim, name, BASE),
            VS_BEST_LM: pair(by_passage, name, best_lm) if best_lm and row["objective"] else None,
            VS_RECIPE: pair(by_passage, name, _table_recipe_row(name, row, config)) if row["recipe"] else None,
        })
    for key, gap in (("reward", "gap closed"), ("discrim", "discrim gap closed")):
        base, ceiling = (next((r[key] for r in out if r["condition"] == name), None) for name in (BASE, OPEN_BOOK))
        for r in out:
            r[gap] = (None if None in (base, ceiling, r[key]) or ceiling == base
                      else (r[key] - base) / (ceiling - base))
    shown = columns("loglik" if config.reward.metric == "teacher" else config.reward.metric)  # tables: gold answers
    if not any(r["kind"] == "passage" and r["round"] for r in out):  # no policy's passage-only row: the column
        shown = [c for c in shown if c.key != OWN]                    # would repeat "vs passage only"
    if best_lm is None:
        shown = [c for c in shown if c.key != VS_BEST_LM]
    if not any(r["recipe"] for r in rows.values()):
        shown = [c for c in shown if c.key != VS_RECIPE]
    if not any(r["discrim"] is not None for r in out):
        shown = [c for c in shown if c.key not in ("discrim", "discrim gap closed", DISCRIM_VS_BASE)]
    for key in ("judge", "distinct-2", "coverage", VS_BASE_SELF_EDITS, VS_SENTENCES):  # columns no row has
        if not any(r[key] is not None for r in out):
            shown = [c for c in shown if c.key != key]
    units = len({pid for values in by_passage.values() for pid in values})
    notes = [interval_note(units, "passages"), *teacher_signal(by_passage, discrim)] if units else []
    return Table(shown, out, "reward", score_label(config), notes=notes)


def _passage_texts(config: KnowledgeConfig) -> dict[str, str]:
    """{passage id: its text} of the run's data, for the self-edits' coverage; empty when the data is no
    longer where it was, or would be downloaded (a table never needs the network)."""
    from seal.knowledge.data import DataError, load_passages

    d = config.data
    if d.source == "hub":
        return {}
    try:
        return {p.id: p.context for p in load_passages(d.source, d.path, d.hub_split)}
    except (DataError, OSError):
        return {}


def row_name(name: str) -> str:
    """A condition's name without the "[objective, recipe]" that `conditions` appends to a variant's."""
    return re.sub(r" \[[^\]]*\]$", "", name)


def _table_recipe_row(name: str, row: dict, config: KnowledgeConfig) -> str:
    """The row that a recipe row (`name`, "... [recipe]") varies: the same row with the same objective
    under the table's own recipe (named as `conditions` names it)."""
    base = row_name(name)
    objectives = config.eval.objectives or [config.inner_loop.objective]
    return base if row["objective"] == objectives[0] else f"{base} [{row['objective']}]"


def teacher_signal(by_passage: dict, discrim: dict) -> list[str]:
    """Per passage, whether the teacher (the open book) beats the student before any update (the closed
    book): distillation can only carry what the teacher knows."""
    if BASE not in by_passage or OPEN_BOOK not in by_passage:
        return []
    lines = []
    for what, values in (("reward", by_passage), ("discrimination", discrim)):
        both = sorted(set(values.get(BASE, {})) & set(values.get(OPEN_BOOK, {})))
        if both:
            ahead = sum(values[OPEN_BOOK][p] > values[BASE][p] for p in both)
            lines.append(f"teacher signal ({what}): the open book beats the closed book before any update on "
                         f"{ahead} of {len(both)} passages")
    return lines


def _same_update_row(row: dict, rows: dict[str, dict], kind: str, round_: int | None) -> str | None:
    """The name of the row of `kind` and `round_` trained with the same objective and recipe as `row`, a
    row trained on self-edits (the reference it is paired with), or None."""
    if row["kind"] not in ("self-edits", "teacher", "probes"):
        return None
    return next((name for name, r in rows.items() if r["kind"] == kind and r["round"] == round_
                 and r["objective"] == row["objective"] and r["recipe"] == row["recipe"]), None)


def _own_passage_row(row: dict, rows: dict[str, dict]) -> str | None:
    """The name of the passage-only row trained on the same model as a self-edit row: its round's
    policy's (same round and policy run), or the base model's for rows of round 0 or none."""
    if row["kind"] not in ("self-edits", "teacher", "probes"):
        return None
    policy_round = row["round"] or None
    return next((name for name, r in rows.items() if r["kind"] == "passage" and r["round"] == policy_round
                 and r["objective"] == row["objective"]
                 and (r["policy"] == row["policy"] or policy_round is None)), None)


def score_label(config: KnowledgeConfig) -> str:
    metric = config.reward.metric
    return ("gold-answer token probability (geometric mean, best gold)" if metric in ("loglik", "teacher")
            else f"{metric} (0-1)")
