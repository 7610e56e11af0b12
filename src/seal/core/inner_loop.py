"""The inner loop, independent of the domain: from (context, self-edit) to a trained adapter and its score.

For every item the domain says what the self-edit becomes (`Domain.prepare`: training examples and a
recipe, or a finished zero-reward record when the self-edit is unusable). This module then trains
every usable update with the inner loop's objective (core/objectives.py), through one of two paths
that compute the same adapters: one PEFT adapter at a time (`training.train`), or all of them together
in one adapter bank (`multi_lora.train_bank`). The domain scores the updated models
(`Domain.score_updated`) and completes each record (`Domain.finish`). Distilling objectives first get
the teacher's distributions: the model as it is, reading the domain's context prefix before each
example (`Domain.teacher_prefix`), computed once per example and cached in the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from seal.core.examples import Example
from seal.core.multi_lora import adapter_bank, train_bank
from seal.core.objectives import Objective, TeacherCache, make_objective, skip_first_targets, teacher_targets
from seal.core.training import fresh_adapter, train

if TYPE_CHECKING:
    from seal.core.domain import Domain
    from seal.core.models import LoadedModel


@dataclass
class Update:
    """What a domain makes of one (context, self-edit): its record so far, and the examples and recipe of
    its update; `examples` None means unusable, and `record` is then the finished result."""

    record: dict
    examples: list[Example] | None = None
    recipe: Any = None  # a LoraTrainConfig; None: the domain's inner_loop section


def objective_of(config) -> Objective:
    """The objective an inner-loop section (`objective`, `distill`) trains with."""
    return make_objective(config.objective, distill=config.distill)


def train_updates(lm: LoadedModel, domain: Domain, items: list[tuple], batched: bool) -> list[dict]:
    """Every (context, self_edit, seed, pre) item through the inner loop: prepared by the domain, trained
    (in one adapter bank when `batched`, else one adapter at a time), scored and finished by the domain.
    Results are in item order and equal on both paths (within floating point)."""
    cfg = domain.inner_loop_config
    objective = domain.objective
    updates = [domain.prepare(lm, *item) for item in items]
    for u in updates:  # recorded with every result, usable or not
        u.record = dict(u.record, objective=objective.describe())
    results: list[dict | None] = [u.record if u.examples is None else None for u in updates]
    usable = [i for i, u in enumerate(updates) if u.examples is not None]
    if not usable:
        return results
    precision = domain.precision(lm)
    if objective.needs_teacher:
        taught = iter(teach(lm, domain, [e for i in usable for e in updates[i].examples],
                            [items[i][0] for i in usable for _ in updates[i].examples]))
        for i in usable:
            updates[i].examples = [next(taught) for _ in updates[i].examples]
    recipes = [updates[i].recipe or cfg for i in usable]
    seeds = [items[i][2] for i in usable]
    contexts = [items[i][0] for i in usable]
    if batched:
        with adapter_bank(lm, cfg, seeds) as bank:
            stats = train_bank(lm, bank, [updates[i].examples for i in usable], recipes, seeds=seeds,
                               precision=precision, max_tokens=cfg.tokens_per_forward, objective=objective)
            scored = domain.score_updated(lm, contexts, list(range(len(usable))))
    else:
        stats, scored = [], []
        for i, recipe, seed, context in zip(usable, recipes, seeds, contexts):
            with fresh_adapter(lm, recipe, seed) as wrapped:
                stats.append(train(wrapped, updates[i].examples, recipe, seed=seed, pad_id=lm.tokenizer.pad_token_id,
                                   device=lm.device, precision=precision, objective=objective))
                scored += domain.score_updated(lm, [context], None)  # lm.model is the wrapped model here
    for i, st, sc in zip(usable, stats, scored):
        results[i] = domain.finish(updates[i].record, st, sc, items[i][3])
    return results


def teach(lm: LoadedModel, domain: Domain, examples: list[Example], contexts: list, objective: Objective | None = None,
          batch_size: int | None = None) -> list[Example]:
    """The examples ready to train with `objective` (the domain's by default): as they are for one without
    a teacher; else each without its first `skip_tokens` targets and carrying its teacher's distributions:
    the model as it is now, with no adapter routed, reading contexts[i] (`Domain.teacher_prefix`) before
    example i, computed once and kept in the domain's teacher cache (the run's)."""
    objective = objective or domain.objective
    if not objective.needs_teacher:
        return list(examples)
    examples = [skip_first_targets(e, objective.skip_tokens) for e in examples]
    prefixes, seen = [], {}
    for context in contexts:  # one tokenisation per context
        key = id(context)
        if key not in seen:
            seen[key] = domain.teacher_prefix(lm, context)
        prefixes.append(seen[key])
    batch_size = batch_size or getattr(domain.inner_loop_config, "batch_size", 8) * 2
    teacher_targets(lm, examples, prefixes, objective, precision=domain.precision(lm), batch_size=batch_size,
                    cache=domain.teacher_cache)
    return examples


def teach_store(lm: LoadedModel, domain: Domain, store, contexts: list, objective: Objective,
                batch_size: int) -> Any:
    """A pooled update's training sequences (a TokenStore on disk) as `objective` trains them: the store
    itself for an objective without a teacher; else its examples in memory, each with the teacher's
    distributions reading contexts[i] (`teach`)."""
    if not objective.needs_teacher:
        return store
    return teach(lm, domain, [store[i] for i in range(len(store))], contexts, objective, batch_size=batch_size)


def teacher_cache(run_path) -> TeacherCache:
    """Where a run keeps its teachers' distributions."""
    return TeacherCache(run_path / "cache" / "teacher")
