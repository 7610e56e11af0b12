"""The ReST-EM outer loop, independent of the domain.

One round, on the current policy: for every training context, score the policy before any update
(once per context) and, with the domain's context-alone baseline (Domain.context_alone; knowledge:
reward.baseline passage), trained on the context alone; sample k
self-edits, evaluate each in the inner loop (eval_times repeats; many self-edits at a time when the
domain supports batched evaluation, see multi_lora). ReST-EM keeps the best (E-step: rejection
sampling) and fine-tunes the policy on (prompt -> kept self-edit) with the loss on the self-edit only,
then merges it (M-step). RLOO instead trains on every sample, its loss weighted by its reward minus
the mean reward of the context's other samples. The next round samples from the new policy; after the
last round the new policy is evaluated the same way (restem.evaluate_policy), so that every policy,
the base model included, has its point on the learning curve (core/curves.py).

Every step is a keyed record in the run, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seal.core.bank_size import adapters_per_batch, widest_batch
from seal.core.distributed import executor, map_unordered
from seal.core.domain import Domain
from seal.core.generation import format_prompt, generate, resolve_precision, use_chat
from seal.core.models import DeferredModel, LoadedModel, load_model, merge_saved_adapter, release_memory
from seal.core.objectives import Objective, make_objective
from seal.core.progress import Progress
from seal.core.runs import Run
from seal.core.training import has_target, sft_and_merge, sft_example


def derive_seed(*parts) -> int:
    """A stable seed for one piece of work, independent of the order in which work is done."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def sample_self_edits(lm: LoadedModel, prompts: list[str], n: int, config, seed: int,
                      valid: Callable[[str], bool] | None = None, prefill: str = "") -> list[dict]:
    """n self-edits for each prompt, `self_edit.batch_size` rows decoding together. With `valid`, a self-edit it
    rejects is sampled again, at most `self_edit.max_resamples` times (the last try is kept); the
    rejected texts are recorded too. `prefill` starts every answer (after the chat template's
    assistant turn) and is part of the recorded self-edit."""
    cfg = config.self_edit
    chat = use_chat(lm, config.model.chat_template)
    texts = [format_prompt(lm, p, chat) + prefill for p in prompts for _ in range(n)]

    def sample(rows, s):
        gens = generate(lm, [texts[i] for i in rows], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, batch_size=cfg.batch_size, seed=s,
                        precision=resolve_precision(config.model.precision, lm.device))
        for g in gens:
            g.text = prefill + g.text
        return gens

    gens = sample(range(len(texts)), seed)
    rejected: list[list[str]] = [[] for _ in texts]
    for attempt in range(1, cfg.max_resamples + 1 if valid else 1):
        again = [i for i, g in enumerate(gens) if not valid(g.text)]
        if not again:
            break
        for i, g in zip(again, sample(again, derive_seed(seed, "resample", attempt))):
            rejected[i].append(gens[i].text)
            gens[i] = g
    out = []
    for i, prompt in enumerate(prompts):
        mine = slice(i * n, (i + 1) * n)
        record = dict(prompt=prompt, self_edits=[g.text for g in gens[mine]], n_tokens=[g.n_tokens for g in gens[mine]],
                      hit_limit=[g.hit_limit for g in gens[mine]])
        if valid:
            record["rejected"] = rejected[mine]
        out.append(record)
    return out


@dataclass
class SelfEditWriter:
    """`write(contexts, seed)` for `record_samples`: n self-edits per context from `lm`, which it reads at
    call time (so it follows policy adapters merged into `lm` later). A domain that declares
    `checks_self_edits` gets its unusable self-edits re-sampled (self_edit.max_resamples). Its calls
    run on `lm`'s workers when it has them (core/distributed.py)."""

    lm: LoadedModel
    domain: Domain
    n: int
    config: Any

    def __call__(self, contexts: list, seed: int) -> list[dict]:
        return write_self_edits(self.lm, self.domain, self.n, self.config, contexts, seed)


def write_self_edits(lm: LoadedModel, domain: Domain, n: int, config, contexts: list, seed: int) -> list[dict]:
    return sample_self_edits(lm, [domain.self_edit_prompt(c) for c in contexts], n, config, seed,
                             valid=domain.self_edit_ok if domain.checks_self_edits else None, prefill=domain.prefill)


def self_edit_writer(lm: LoadedModel, domain: Domain, n: int, config) -> SelfEditWriter:
    return SelfEditWriter(lm, domain, n, config)


def record_samples(run: Run, jobs: list[tuple[str, Any, dict]], write: Callable[[list, int], list[dict]],
                   per_call: int, seed_parts: tuple, progress: Progress | None = None) -> None:
    """Write self-edits for every (key, context, tags) job that has no record yet (or whose record is
    an `error`: a writer that failed, retried here), `per_call` contexts per call of
    `write(contexts, seed)`, recording each context's samples as soon as its call returns. The calls
    cut the whole job list the same way every time, and a call's seed is that of its first job, so a
    context gets the same self-edits whether or not the run was interrupted in between."""
    def done(key):
        record = run.get(key)
        return record is not None and not record.get("error")

    if progress:
        progress.start("sampling", "writing self-edits", len(jobs))
    calls = []  # (part, missing, seed) of each call that has something to write
    for start in range(0, len(jobs), per_call):
        part = jobs[start:start + per_call]
        missing = [not done(key) for key, _, _ in part]
        if any(missing):
            calls.append((part, missing, derive_seed(run.config.seed, *seed_parts, part[0][0])))
        if progress:  # a call re-samples its whole part, but records (and counts as new) only what is missing
            progress.skip("sampling", missing.count(False))
    contexts = lambda part: [context for _, context, _ in part]
    if isinstance(write, SelfEditWriter):  # farmed out when the model has workers
        results = map_unordered(executor(write.lm), write_self_edits,
                                [(write.domain, write.n, write.config, contexts(part), seed) for part, _, seed in calls])
    else:
        results = ((i, write(contexts(part), seed)) for i, (part, _, seed) in enumerate(calls))
    for i, samples in results:
        part, missing, _ = calls[i]
        for (key, _, tags), sample, todo in zip(part, samples, missing):
            if todo:
                run.append("samples", key, **tags, **sample)
        if progress:
            progress.advance("sampling", sum(missing), tokens=sum(sum(s.get("n_tokens") or [0])
                                                                 for s, todo in zip(samples, missing) if todo),
                             unit="generated tokens")
    if calls:
        release_memory()


def record_scores(run: Run, lm: LoadedModel, domain: Domain, calls: list[tuple[str, dict, str, tuple]],
                  progress: Progress | None = None, bar: str = "contexts") -> dict[str, dict]:
    """Each (key, tags, method, args) that the run has no record of: `domain.method(lm, *args)` (a score
    before any update), on `lm`'s workers when it has them, recorded ("pre_update") under key with tags
    as it arrives. Returns every key's record."""
    todo = [call for call in calls if run.get(call[0]) is None]
    if progress:
        progress.skip(bar, len(calls) - len(todo))
    for i, result in map_unordered(executor(lm), call_domain, [(domain, method, args) for _, _, method, args in todo]):
        key, tags = todo[i][:2]
        run.append("pre_update", key, **tags, **result)
        if progress:
            progress.advance(bar)
    if todo:
        release_memory()
    return {key: run.get(key) for key, *_ in calls}


def call_domain(lm: LoadedModel, domain: Domain, method: str, args: tuple) -> Any:
    return getattr(domain, method)(lm, *args)


@dataclass
class EvalJob:
    """One self-edit to evaluate (eval_times repeats, recorded under f"{key}/{repeat}")."""

    key: str
    context: Any
    self_edit: str | None
    pre: dict
    seed_parts: tuple  # this self-edit's own seed (inner_loop.common_seeds false)
    tags: dict = field(default_factory=dict)
    common_parts: tuple | None = None  # the seed it shares with the other self-edits of its context

    def seed(self, config, repeat: int) -> int:
        shared = config.inner_loop.common_seeds and self.common_parts is not None
        return derive_seed(config.seed, *(self.common_parts if shared else self.seed_parts), repeat)


def evaluate_jobs(run: Run, lm: LoadedModel, domain: Domain, jobs: list[EvalJob],
                  progress: Progress | None = None, bar: str = "evals", repeats: int | None = None) -> dict[str, list[dict]]:
    """The inner loop for every job, `repeats` (default inner_loop.eval_times) times each, every result
    recorded as it finishes.
    Batched (inner_loop.batched): K adapters at a time trained and evaluated together through the
    domain's `evaluate_batch`; else one adapter at a time through `evaluate`. Returns each job's records."""
    cfg = run.config.inner_loop
    repeats = repeats or cfg.eval_times
    todo = [(job, t, f"{job.key}/{t}") for job in jobs for t in range(repeats)]
    todo = [(job, t, key, job.seed(run.config, t)) for job, t, key in todo if run.get(key) is None]
    if progress:
        progress.skip(bar, len(jobs) * repeats - len(todo))
    batched = cfg.batched and domain.batched
    pool = executor(lm)
    # K within the device's memory once (memory freed after a batch is not always reported as free
    # again), and from the time an evaluation took: the run's last one on resume, then each batch's own
    widest = pool.call(widest_batch, cfg, len(todo)) if batched and todo and not cfg.adapters_per_batch else None
    per_eval, previous = _last_seconds_per_eval(run), None
    begin, pending = 0, {}
    if progress and batched:  # a batch trained in this process shows its steps (one can take an hour)
        lm.on_train_step = lambda step, steps: _steps_line(progress, bar, step, steps)
    try:
        while begin < len(todo) or pending:
            while begin < len(todo) and pool.free():  # a batch for every free worker (one, in this process)
                size = adapters_per_batch(cfg, len(todo) - begin, widest, per_eval, previous) if batched else 1
                chunk = todo[begin:begin + size]
                begin += len(chunk)
                items = [(job.context, job.self_edit, seed, job.pre) for job, _, _, seed in chunk]
                pending[pool.submit(evaluate_chunk, domain, items, batched)] = chunk
            ticket, (results, elapsed) = pool.next_done()
            chunk = pending.pop(ticket)
            previous = (len(chunk), elapsed)
            seconds = round(elapsed / len(chunk), 2)  # each one's share of the batch
            trained = sum(1 for r in results if r.get("valid", True))  # unusable self-edits cost next to nothing
            if trained:
                per_eval = elapsed / trained
            for (job, t, key, seed), result in zip(chunk, results):
                run.append("self_edit_eval", key, self_edit=job.self_edit, repeat=t, seed=seed, seconds=seconds,
                           batch=len(chunk), **job.tags, **result)
            if progress:
                progress.advance(bar, len(chunk), tokens=sum((r.get("train") or {}).get("tokens", 0) for r in results),
                                 unit="training tokens")
    finally:
        lm.on_train_step = None
    if todo:  # after a phase, not a batch: the next batch would only fault the pages in again
        release_memory()
    return {job.key: [run.get(f"{job.key}/{t}") for t in range(repeats)] for job in jobs}


def _steps_line(progress: Progress, bar: str, step: int, steps: int) -> None:
    """The training steps of the inner-loop batch in flight, as a bar of its own under `bar`."""
    if step == 1:
        progress.start(f"{bar}/steps", "  inner-loop batch in flight: training steps", steps)
    progress.advance(f"{bar}/steps")


def evaluate_chunk(lm: LoadedModel, domain: Domain, items: list[tuple], batched: bool) -> tuple[list[dict], float]:
    """The inner loop for (context, self_edit, seed, pre) items: many adapters in one bank (`batched`) or
    one at a time; with the seconds it took."""
    start = time.perf_counter()
    results = domain.evaluate_batch(lm, items) if batched else [domain.evaluate(lm, *item) for item in items]
    return results, time.perf_counter() - start


def _last_seconds_per_eval(run: Run) -> float | None:
    """Seconds per trained evaluation in the run's latest batch, if it has one (a resumed run sizes its
    first batch by it)."""
    for record in reversed(run.records("self_edit_eval")):
        if record.get("valid", True) and record.get("seconds"):
            return float(record["seconds"])
    return None


def restem_round(run: Run, lm: LoadedModel, domain: Domain, contexts: list, round_idx: int,
                 progress: Progress) -> list[dict]:
    """E-step of one round: sample k self-edits per context from the current policy, score the policy
    before any update and (reward.baseline: the domain's context_alone) trained on the context alone in each repeat, evaluate
    every self-edit; return what the M-step trains on (see `select`)."""
    cfg = run.config
    k = cfg.restem.k
    alone = context_alone(domain, cfg)
    key = lambda c: f"round{round_idx}/samples/{domain.context_id(c)}"
    record_samples(run, [(key(c), c, dict(round=round_idx, context_id=domain.context_id(c))) for c in contexts],
                   self_edit_writer(lm, domain, k, cfg), max(1, cfg.self_edit.batch_size // k),
                   ("restem", round_idx), progress)
    ids = [domain.context_id(c) for c in contexts]
    scores = record_scores(run, lm, domain, [(f"round{round_idx}/pre/{cid}", dict(round=round_idx, context_id=cid),
                                              "pre_update", (c,)) for cid, c in zip(ids, contexts)], progress)
    pres = {cid: scores[f"round{round_idx}/pre/{cid}"] for cid in ids}
    jobs = []
    for cid, context in zip(ids, contexts):
        common = ("restem", round_idx, cid)  # shared by the context's samples and its passage-only training
        if alone:
            jobs.append(EvalJob(f"round{round_idx}/{alone}/{cid}", context, None, pres[cid], (*common, alone),
                                dict(round=round_idx, context_id=cid, baseline=alone), common_parts=common))
        for i, self_edit in enumerate(run.get(key(context))["self_edits"]):
            jobs.append(EvalJob(f"round{round_idx}/eval/{cid}/{i}", context, self_edit, pres[cid], (*common, i),
                                dict(round=round_idx, context_id=cid, sample=i), common_parts=common))
    results = evaluate_jobs(run, lm, domain, jobs, progress)
    kept = []
    for context in contexts:
        cid = domain.context_id(context)
        samples = run.get(key(context))
        baseline = baseline_reward(cfg.reward.baseline, pres[cid], results.get(f"round{round_idx}/{alone}/{cid}", []) if alone else None)
        rewards = {}
        for i in range(len(samples["self_edits"])):
            reward = mean_reward(results[f"round{round_idx}/eval/{cid}/{i}"])
            if reward is not None:  # all repeats ungraded (a failed judge): not a candidate, not a zero
                rewards[i] = reward
        if cfg.reward.require_improvement and baseline is not None:  # on the reward itself, before any bonus
            rewards = {i: r for i, r in rewards.items() if r > baseline}
        scored = diversity_scores(rewards, samples["self_edits"], domain.source_text(context), cfg.restem)
        for score, i, weight in select([(v, i) for i, v in scored.items()], baseline, cfg):
            kept.append(dict(context_id=cid, prompt=samples["prompt"], self_edit=samples["self_edits"][i],
                             reward=rewards[i], baseline=baseline, pre_reward=pres[cid]["reward"], sample=i,
                             **({} if weight is None else dict(weight=weight)),
                             **({} if score == rewards[i] else dict(score=score))))
    return kept


def diversity_scores(rewards: dict[int, float], texts: list[str], source: str | None, cfg) -> dict[int, float]:
    """What the M-step selects on, per sample: its reward, plus restem.coverage_bonus times the share of
    the context's content words its text uses (when the context has a text); samples whose own
    distinct-2 is below restem.min_distinct_2 (repetitive text) are left out. Both keep the policy from
    collapsing onto a few repeated phrases, which a reward alone may favour."""
    from seal.core.curves import coverage, distinct_2

    out = {}
    for i, reward in rewards.items():
        if cfg.min_distinct_2 is not None and (distinct_2([texts[i]]) or 0.0) < cfg.min_distinct_2:
            continue
        bonus = cfg.coverage_bonus * (coverage([texts[i]], source) or 0.0) if cfg.coverage_bonus and source else 0.0
        out[i] = reward + bonus
    return out


def mean_reward(records: list[dict | None] | None) -> float | None:
    """The mean reward over a self-edit's repeats that were graded (None: none was)."""
    rewards = [r["reward"] for r in records or [] if r is not None and r.get("reward") is not None]
    return sum(rewards) / len(rewards) if rewards else None


def context_alone(domain: Domain, cfg) -> str | None:
    """The name of the context-alone baseline when reward.baseline asks for it (Domain.context_alone)."""
    return domain.context_alone if domain.context_alone and cfg.reward.baseline == domain.context_alone else None


def baseline_reward(kind: str, pre: dict, alone: list[dict] | None) -> float | None:
    """The reward a self-edit is compared with: the pre-update score, the mean over repeats of training
    on the context alone (`alone`: those trainings' records, None when the baseline is not that one), or
    none. A missing score counts as 0 (an ungraded pre-update score)."""
    if kind == "pre_update":
        return pre["reward"] if pre["reward"] is not None else 0.0
    if alone is not None:  # kind is the domain's context-alone baseline, which was trained
        value = mean_reward(alone)
        return value if value is not None else 0.0
    return None


def rloo_weights(rewards: list[float]) -> list[float]:
    """Each reward minus the mean of the others (leave-one-out): the weights sum to zero, and equal
    rewards give all-zero weights. Fewer than two rewards: no comparison, zero weights."""
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    return [sum(r - other for other in rewards) / (n - 1) for r in rewards]  # exact 0 for equal rewards


def select(candidates: list[tuple[float, int]], baseline: float | None, cfg) -> list[tuple[float, int, float | None]]:
    """What one context gives the M-step, as (reward, sample, weight). rest-em: the kept self-edits
    (`keep`; with reward.require_improvement only those beating the baseline), weight None. rloo: every
    candidate with a non-zero leave-one-out weight."""
    if cfg.restem.algorithm == "rloo":
        weights = rloo_weights([reward for reward, _ in candidates])
        return [(reward, i, w) for (reward, i), w in zip(candidates, weights) if w != 0.0]
    return [(reward, i, None) for reward, i in keep(candidates, cfg.restem.keep, cfg.restem.min_reward)
            if not (cfg.reward.require_improvement and baseline is not None and reward <= baseline)]


def keep(candidates: list[tuple[float, int]], how: str, min_reward: float | None) -> list[tuple[float, int]]:
    """The (reward, sample) pairs kept for the M-step: the best one, or all; none below min_reward."""
    good = [c for c in candidates if min_reward is None or c[0] >= min_reward]
    if how == "best":
        return [max(good)] if good else []  # ties go to the later sample; order is random anyway
    return sorted(good, key=lambda c: c[1])


def restem(run: Run, lm: LoadedModel, domain: Domain, contexts: list, progress: Progress) -> None:
    """R rounds of ReST-EM (or RLOO, restem.algorithm); `lm` ends as the last round's policy. Finished
    rounds are re-applied from their saved adapters on resume. With restem.evaluate_policy, the last
    policy then samples and evaluates its own self-edits for the training contexts (round R+1's E-step,
    with no M-step): the last point of the learning curve."""
    cfg = run.config
    precision = resolve_precision(cfg.model.precision, lm.device)
    chat = use_chat(lm, cfg.model.chat_template)
    for r in range(1, cfg.restem.rounds + 1):
        done = run.get(f"round{r}/done")
        if done is not None:
            if done["adapter"]:
                merge_saved_adapter(lm, run.path / done["adapter"])
            continue
        kept = e_step(run, lm, domain, contexts, r, progress)
        adapter, stats, dropped = None, None, []
        examples = []
        for k in kept:
            example = sft_example(lm.tokenizer, format_prompt(lm, k["prompt"], chat), k["self_edit"],
                                  cfg.restem.sft.max_seq_len)
            example.weight = k.get("weight", 1.0)
            if has_target(example):
                examples.append(example)
            else:  # nothing of the self-edit fits restem.sft.max_seq_len: no target, a NaN loss
                dropped.append(k["context_id"])
        if examples:
            folder = run.path / f"policy/round-{r}"
            progress.start("sft", f"round {r}: policy fine-tuning ({cfg.restem.algorithm})",
                           cfg.restem.sft.epochs * -(-len(examples) // cfg.restem.sft.batch_size))
            stats = sft_and_merge(lm, examples, cfg.restem.sft, seed=derive_seed(cfg.seed, "sft", r),
                                  precision=precision, save_dir=folder, objective=m_step_objective(cfg),
                                  on_step=lambda s, total: progress.advance("sft"))
            if isinstance(lm, DeferredModel) and lm.policy is not None:
                lm.model = None  # the driver's copy: its workers merge the saved adapter; read again at the next M-step
            release_memory()
            if stats.problem is None:  # saved (complete, or not at all) and merged
                adapter = f"policy/round-{r}"
            else:
                progress.log(f"round {r}: policy update {stats.problem}")
        rewards = [k["reward"] for k in kept]
        run.append("round", f"round{r}/done", round=r, algorithm=cfg.restem.algorithm, kept=kept, adapter=adapter,
                   sft=stats.as_dict() if stats else None, sft_dropped=dropped,
                   mean_kept_reward=sum(rewards) / len(rewards) if rewards else None)
    if cfg.restem.evaluate_policy:
        e_step(run, lm, domain, contexts, cfg.restem.rounds + 1, progress, final=True)


def m_step_objective(cfg) -> Objective:
    """The loss of the policy update: `lm` on the kept self-edits (rest-em); rloo: each sample's loss
    weighted by its advantage (`weighted`), clipped when restem.rloo_clip is set (`clipped`)."""
    if cfg.restem.algorithm != "rloo":
        return make_objective("lm")
    return make_objective("clipped", clip=cfg.restem.rloo_clip) if cfg.restem.rloo_clip else make_objective("weighted")


def e_step(run: Run, lm: LoadedModel, domain: Domain, contexts: list, r: int, progress: Progress,
           final: bool = False) -> list[dict]:
    cfg = run.config
    what = "the last policy's own evaluation" if final else f"round {r}"
    jobs = cfg.restem.k + (context_alone(domain, cfg) is not None)
    progress.start("contexts", f"{what}: pre-update scores", len(contexts))
    progress.start("evals", f"{what}: self-edit evaluations", len(contexts) * jobs * cfg.inner_loop.eval_times)
    return restem_round(run, lm, domain, contexts, r, progress)


def policy_rounds(lm: LoadedModel, policy_run: str | Path, last: int = 0):
    """Yield r for each finished round of a restem run (up to round `last`, when not 0), once that round's
    policy adapter is merged into `lm`: while r is being handled, `lm` is round r's policy. An unfinished
    round ends the rounds."""
    policy = Run.resume(policy_run)  # with its own configuration: its number of rounds
    rounds = policy.config.restem.rounds
    for r in range(1, (min(last, rounds) if last else rounds) + 1):
        done = policy.get(f"round{r}/done")
        if done is None:
            return
        if done["adapter"]:
            merge_saved_adapter(lm, Path(policy_run) / done["adapter"])
        yield r


def reset_to_base(lm: LoadedModel) -> None:
    """`lm` back to its base weights (loaded again; a DeferredModel: when next used), without any
    policy adapter; its workers follow."""
    lm.model = None  # freed before the fresh copy loads: never two models at once
    release_memory()
    if isinstance(lm, DeferredModel):
        lm.policy = []
        return
    lm.model, lm.policy = load_model(lm.name, str(lm.device), lm.dtype).model, []


def policy_labels(policy_runs: list[Path]) -> list[str]:
    """What tells restem runs apart in table rows: nothing for a single run, else each run's
    restem.algorithm, or its directory name where two runs share one."""
    algorithms = [Run.resume(p).config.restem.algorithm for p in policy_runs]
    return ["" if len(policy_runs) == 1 else a if algorithms.count(a) == 1 else Path(p).name
            for p, a in zip(policy_runs, algorithms)]


def policy_series(lm: LoadedModel, policy_runs: list[Path], last: int = 0):
    """Yield (label, r) for each finished round (up to round `last`, when not 0) of each restem run in turn,
    `lm` being that round's policy while it is handled; before each later run, `lm` goes back to the base
    model's weights. The label tells the runs apart in table rows (`policy_labels`)."""
    for n, (path, label) in enumerate(zip(policy_runs, policy_labels(policy_runs))):
        if n:
            reset_to_base(lm)
        for r in policy_rounds(lm, path, last):
            yield label, r


def timing_summary(run: Run) -> list[str]:
    """Lines on where the time went: per self-edit evaluation, and per ReST-EM round."""
    lines = []
    evals = [r for r in run.records("self_edit_eval") if "seconds" in r]
    trained = [r["train"] for r in evals if r.get("train")]
    if evals:
        secs = sorted(r["seconds"] for r in evals)
        lines.append(f"self-edit evaluations: {len(evals)}, wall time mean {sum(secs) / len(secs):.1f} s "
                     f"(median {secs[len(secs) // 2]:.1f}, max {secs[-1]:.1f})")
    if trained:
        tokens, seconds = sum(t["tokens"] for t in trained), sum(t["seconds"] for t in trained)
        lines.append(f"inner-loop training: {tokens / seconds:.0f} tokens/s over {tokens} tokens")
    for done in run.records("round"):
        r = done["round"]
        first = min(x["time"] for x in run.records() if x.get("round") == r)
        elapsed = time.mktime(time.strptime(done["time"], "%Y-%m-%dT%H:%M:%S")) - \
            time.mktime(time.strptime(first, "%Y-%m-%dT%H:%M:%S"))
        reward = done["mean_kept_reward"]
        lines.append(f"round {r}: {elapsed / 60:.1f} min, kept {len(done['kept'])} self-edits, "
                     f"mean kept reward {'-' if reward is None else f'{reward:.4f}'}")
    return lines
