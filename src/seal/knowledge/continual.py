"""Continual self-edits: passages learned one after another, and how much of the earlier ones survives.

S seeded sequences of T passages are drawn from the held-out passages. Each passage gets one
self-edit written by the starting model (the base model, or a SEAL policy), shared by every sequence
and remedy so that remedies differ in the update alone. For each remedy and sequence, step t trains
one LoRA on passage t's self-edit (the inner-loop recipe), folds it into the model or stacks it, and
then asks the questions of passages 1..t without their passages: row t of a lower-triangular
accuracy matrix. Remedies (continual.remedies):

- none: plain sequential updates, the baseline every remedy is compared with;
- replay: step t also trains on a sample of the training sequences of steps < t;
- kl: step t adds a KL term to the model before step t on sequences of steps < t;
- orthogonal: step t penalises overlap between its LoRA A matrices and those of steps < t;
- route: no sequential update at all: one adapter per passage (from the starting model), and each
  question goes to the adapter of the seen passage that TF-IDF retrieval finds closest to it.

Each step is a record, written when its questions are graded; a step's adapter is saved until its
sequence is complete, so `--resume` re-applies finished steps and goes on from the first missing one.
"""

from __future__ import annotations

import random
import shutil
import statistics
from pathlib import Path

from seal.core.config import ConfigError
from seal.core.continual import SequentialLora, kl_loss, orthogonal_penalty, project_out, replay_sample
from seal.core.generation import resolve_precision
from seal.core.inner_loop import teach
from seal.core.models import LoadedModel, load_configured
from seal.core.multi_lora import adapter_bank, train_bank
from seal.core.progress import Progress
from seal.core.restem import derive_seed, policy_rounds, record_samples, self_edit_writer
from seal.core.runs import Run
from seal.core.training import Example, train
from seal.knowledge.data import Passage
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.retrieval import TfIdf


def draw_sequences(pool: list[Passage], steps: int, n: int, seed: int) -> list[list[Passage]]:
    """n sequences of `steps` distinct passages each; sequence s depends on (seed, s) only."""
    if steps > len(pool):
        raise ConfigError(f"continual.steps={steps} needs at least that many passages; data.eval_passages gives {len(pool)}")
    return [random.Random(derive_seed(seed, "continual", s)).sample(pool, steps) for s in range(n)]


def continual(run: Run, domain: KnowledgeDomain, pool: list[Passage], progress: Progress,
              policy_run: Path | None = None, lm: LoadedModel | None = None) -> dict:
    """Every (remedy, sequence) of the configuration; returns `summary(run)`."""
    config = run.config
    c = config.continual
    lm = lm or load_configured(config.model)
    if policy_run is not None:
        for _ in policy_rounds(lm, policy_run):  # start from the last finished round's policy
            pass
    sequences = draw_sequences(pool, c.steps, c.sequences, config.seed)
    run.cached("continual_plan", "continual/plan", lambda: dict(
        sequences=[[p.id for p in seq] for seq in sequences], policy=str(policy_run) if policy_run else None))
    used = list({p.id: p for seq in sequences for p in seq}.values())
    record_samples(run, [(f"continual/samples/{p.id}", p, dict(context_id=p.id)) for p in used],
                   self_edit_writer(lm, domain, 1, config), config.self_edit.batch_size, ("continual",), progress)
    # The starting model's scores: the level each passage starts from before any edit.
    todo = [p for p in used if run.get(f"continual/start/{p.id}") is None]
    for p, scored in zip(todo, domain.score_many(lm, todo) if todo else []):
        run.append("pre_update", f"continual/start/{p.id}", context_id=p.id, **scored)
    data = {p.id: _training_data(run, lm, domain, p) for p in used}

    total = len(c.remedies) * c.sequences * c.steps
    progress.start("steps", "continual steps", total)
    for s, seq in enumerate(sequences):  # sequence-major: a run stopped early has every remedy on the same sequences
        for remedy in c.remedies:
            if remedy == "route":
                _routed(run, lm, domain, seq, s, data, progress)
            else:
                _sequential(run, lm, domain, seq, s, remedy, data, progress)
    return summary(run)


def _training_data(run: Run, lm: LoadedModel, domain: KnowledgeDomain, passage: Passage) -> tuple[list[Example], str | None]:
    """A passage's training examples from its recorded self-edit, made as the inner loop makes them
    (`Domain.prepare`; for a distilling objective with the teacher's distributions: the starting model,
    before any step, reading the passage), or ([], why) when the self-edit is unusable."""
    text = run.get(f"continual/samples/{passage.id}")["self_edits"][0]
    update = domain.prepare(lm, passage, text, seed=0, pre=dict(reward=None))
    if update.examples is None:
        return [], update.record["problem"]
    return teach(lm, domain, update.examples, [passage] * len(update.examples)), None


def _record_step(run: Run, key: str, domain: KnowledgeDomain, lm: LoadedModel, seq: list[Passage], t: int,
                 adapters: list | None = None, **fields) -> None:
    """Ask the questions of passages 1..t (through `adapters` of the installed bank, when given) and
    record step t with `fields`."""
    seen = seq[:t]
    scored = domain.score_many(lm, seen, adapters=adapters)
    scores = [dict(passage_id=p.id, position=j + 1, reward=sc["reward"], means=sc["means"], answers=sc["answers"],
                   grades=sc["grades"]) for j, (p, sc) in enumerate(zip(seen, scored))]
    run.append("continual_step", key, step=t, passage_id=seq[t - 1].id, scores=scores, **fields)


def _sequential(run: Run, lm: LoadedModel, domain: KnowledgeDomain, seq: list[Passage], s: int, remedy: str,
                data: dict, progress: Progress) -> None:
    config = run.config
    c, cfg = config.continual, config.inner_loop
    prefix = f"continual/{remedy}/s{s}"
    if all(run.get(f"{prefix}/t{t}") is not None for t in range(1, len(seq) + 1)):
        progress.skip("steps", len(seq))
        return
    precision = resolve_precision(config.model.precision, lm.device)
    with SequentialLora(lm, cfg, c.mode) as model:
        for t, passage in enumerate(seq, 1):
            key, folder = f"{prefix}/t{t}", run.path / prefix / f"t{t}"
            done = run.get(key)
            if done is not None and (done["adapter"] is None or (run.path / done["adapter"]).is_dir()):
                if done["adapter"]:
                    model.load(run.path / done["adapter"])
                progress.skip("steps", 1)
                continue
            examples, problem = data[passage.id]
            earlier = [data[p.id][0] for p in seq[:t - 1]]
            seed = derive_seed(config.seed, "continual", s, t)  # the same for every remedy
            fields = dict(remedy=remedy, mode=c.mode, sequence=s, valid=problem is None, problem=problem,
                          train=None, adapter=None, objective=domain.objective.describe())
            if problem is None:
                train_on = list(examples)
                if remedy == "replay":
                    picks = replay_sample(earlier, round(c.replay_ratio * len(examples)), seed)
                    train_on += [earlier[step][i] for step, i in picks]
                    fields["replayed"] = [[step + 1, i] for step, i in picks]  # (earlier step, sequence)
                wrapped = model.begin(seed)
                extra = None
                if remedy == "kl":
                    extra = kl_loss(wrapped, earlier, c.kl_batch, c.kl_weight, model.reference, seed,
                                    lm.tokenizer.pad_token_id, lm.device)
                elif remedy == "orthogonal" and model.history:
                    name = model.current
                    if c.orthogonal_init:
                        project_out(wrapped, name, model.history)
                    extra = lambda step: c.orthogonal_weight * orthogonal_penalty(wrapped, name, model.history)
                stats = train(wrapped, train_on, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id, device=lm.device,
                              precision=precision, extra_loss=extra, objective=domain.objective)
                model.commit(folder)
                fields.update(train=stats.as_dict(), adapter=str(folder.relative_to(run.path)))
            _record_step(run, key, domain, lm, seq, t, **fields)
            progress.advance("steps")
    if not c.keep_adapters:  # the sequence is complete: its adapters are no longer needed to resume
        shutil.rmtree(run.path / prefix, ignore_errors=True)


def _routed(run: Run, lm: LoadedModel, domain: KnowledgeDomain, seq: list[Passage], s: int, data: dict,
            progress: Progress) -> None:
    """One adapter per passage, all trained together in one adapter bank (they are independent of
    each other); after step t each question goes to the adapter of the closest seen passage."""
    config = run.config
    cfg = config.inner_loop
    prefix = f"continual/route/s{s}"
    if all(run.get(f"{prefix}/t{t}") is not None for t in range(1, len(seq) + 1)):
        progress.skip("steps", len(seq))
        return
    # Adapter t-1 belongs to passage t; the last one is never trained: the starting model, for a
    # question whose closest seen passage has no adapter (an unusable self-edit).
    datasets = [data[p.id][0] if data[p.id][1] is None else [] for p in seq] + [[]]
    seeds = [derive_seed(config.seed, "continual", s, t) for t in range(1, len(seq) + 1)] + [0]
    index = TfIdf([f"{p.title}\n{p.context}" for p in seq])
    with adapter_bank(lm, cfg, seeds) as bank:
        stats = train_bank(lm, bank, datasets, cfg, seeds=seeds, precision=resolve_precision(config.model.precision, lm.device),
                           max_tokens=cfg.tokens_per_forward, objective=domain.objective)
        for t, passage in enumerate(seq, 1):
            key = f"{prefix}/t{t}"
            if run.get(key) is not None:
                progress.skip("steps", 1)
                continue
            problem = data[passage.id][1]
            seen = list(range(t))
            routes, hits, total = [], 0, 0
            for j, p in enumerate(seq[:t]):
                picks = [index.best(q.question, among=seen) for q in domain.questions(p)]
                hits += sum(k == j for k in picks)
                total += len(picks)
                routes.append([k if data[seq[k].id][1] is None else len(seq) for k in picks])
            _record_step(run, key, domain, lm, seq, t, remedy="route", mode="route", sequence=s,
                         objective=domain.objective.describe(),
                         valid=problem is None, problem=problem,
                         train=stats[t - 1].as_dict() if problem is None else None, adapter=None,
                         routing_accuracy=hits / total if total else None, routes=routes, adapters=routes)
            progress.advance("steps")


# --- the summary ----------------------------------------------------------------------------------
def matrices(run: Run) -> dict[str, list[list[list[float | None]]]]:
    """remedy -> one T x T matrix per sequence: [s][t-1][j-1] = reward on passage j after step t (None above
    the diagonal, and for steps not recorded yet)."""
    c = run.config.continual
    out: dict[str, list] = {}
    for record in run.records("continual_step"):
        mats = out.setdefault(record["remedy"], [[[None] * c.steps for _ in range(c.steps)] for _ in range(c.sequences)])
        for score in record["scores"]:
            mats[record["sequence"]][record["step"] - 1][score["position"] - 1] = score["reward"]
    return {r: out[r] for r in c.remedies if r in out}


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(run: Run) -> dict:
    """Per remedy: the mean and standard deviation (over sequences) of each matrix cell; retention (mean
    reward on passages 1..T-1 after the last step), plasticity (mean reward on each passage right after its
    own step) and forgetting (mean drop of passages 1..T-1 from right after their own step to after the
    last step), each with its spread over sequences; and the starting model's score on the same passages
    (overall, and per position)."""
    c = run.config.continual
    plan = run.get("continual/plan")
    start = {pid: run.get(f"continual/start/{pid}") for seq in (plan["sequences"] if plan else []) for pid in seq}
    out = {}
    for remedy, mats in matrices(run).items():
        T = c.steps
        cells = [[_mean_sd([m[t][j] for m in mats]) if j <= t else (None, None) for j in range(T)] for t in range(T)]
        retention = [statistics.fmean(m[T - 1][:T - 1]) for m in mats
                     if T > 1 and all(v is not None for v in m[T - 1][:T - 1])]
        plasticity = [statistics.fmean([m[t][t] for t in range(T)]) for m in mats
                      if all(m[t][t] is not None for t in range(T))]
        # forgetting: how far each earlier passage fell from right after its own step to after the last step
        forgetting = [statistics.fmean([m[j][j] - m[T - 1][j] for j in range(T - 1)]) for m in mats
                      if T > 1 and all(m[j][j] is not None and m[T - 1][j] is not None for j in range(T - 1))]
        before = [statistics.fmean([start[pid]["reward"] for pid in seq if start.get(pid)]) for seq in plan["sequences"]]
        by_position = [_mean_sd([start[seq[j]]["reward"] for seq in plan["sequences"] if start.get(seq[j])])
                       for j in range(T)]
        routing = [r["routing_accuracy"] for r in run.records("continual_step")
                   if r["remedy"] == remedy and r.get("routing_accuracy") is not None]
        out[remedy] = dict(
            mean=[[cell[0] for cell in row] for row in cells], sd=[[cell[1] for cell in row] for row in cells],
            retention=_mean_sd(retention), plasticity=_mean_sd(plasticity), forgetting=_mean_sd(forgetting),
            start=_mean_sd(before), start_by_position=[list(p) for p in by_position],
            sequences_done=len(plasticity), routing_accuracy=statistics.fmean(routing) if routing else None)
    return out


def summary_table(summ: dict, metric: str) -> str:
    """Markdown: one row per remedy."""
    def f(pair):
        return "-" if pair[0] is None else f"{pair[0]:.3f} ± {pair[1]:.3f}"
    lines = [f"| remedy | retention ({metric}) | plasticity ({metric}) | forgetting | starting model | sequences | routing accuracy |",
             "|---|---|---|---|---|---|---|"]
    for remedy, s in summ.items():
        routing = "-" if s["routing_accuracy"] is None else f"{s['routing_accuracy']:.2f}"
        lines.append(f"| {remedy} | {f(s['retention'])} | {f(s['plasticity'])} | {f(s['forgetting'])} | {f(s['start'])} | "
                     f"{s['sequences_done']} | {routing} |")
    return "\n".join(lines)


def matrix_table(summ_remedy: dict) -> str:
    """Markdown: the mean ± sd matrix of one remedy, rows = after step t, columns = passage j."""
    mean, sd = summ_remedy["mean"], summ_remedy["sd"]
    T = len(mean)
    lines = ["| after step | " + " | ".join(f"passage {j + 1}" for j in range(T)) + " |",
             "|---|" + "---|" * T]
    start = summ_remedy.get("start_by_position")
    if start:
        lines.append("| before (starting model) | " + " | ".join(
            "-" if m is None else f"{m:.3f} ± {s:.3f}" for m, s in start) + " |")
    for t in range(T):
        cells = ["" if j > t else ("-" if mean[t][j] is None else f"{mean[t][j]:.3f} ± {sd[t][j]:.3f}") for j in range(T)]
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(run: Run) -> str:
    """The summary table and each remedy's matrix, also written to RUN_DIR/continual.md."""
    summ = summary(run)
    if not summ:
        return "no continual steps in this run yet"
    parts = [summary_table(summ, run.config.reward.metric)]
    for name, s in summ.items():
        parts.append(f"{name}: mean ± sd over sequences\n\n{matrix_table(s)}")
    md = "\n\n".join(parts)
    (run.path / "continual.md").write_text(md + "\n", encoding="utf-8")
    return md
