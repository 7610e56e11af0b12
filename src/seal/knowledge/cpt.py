"""Continued pretraining (CPT): many passages learned in one update, then all their questions asked.

The conditions are those of the single-passage table (evaluate.py): the model with no update; trained
on the passages alone; on the passages plus the base model's, a teacher's, or each SEAL round's
self-edits. For a trained condition the training sequences of every passage are pooled into one
on-disk `TokenStore` (streamed from the run's recorded self-edits, one passage at a time), one update
is trained on the pool (LoRA or full fine-tuning, `cpt` section), and the questions of all passages
are answered without their passage, a chunk of passages at a time. Records use the table's keys, so
`table` builds the CPT table exactly as it builds the single-passage one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from seal.core.generation import resolve_precision
from seal.core.inner_loop import teach_store
from seal.core.models import LoadedModel, load_configured
from seal.core.progress import Progress
from seal.core.restem import derive_seed, record_samples
from seal.core.runs import Run
from seal.core.tables import Table
from seal.core.token_store import TokenStore
from seal.core.training import epoch_batches, temporary_update
from seal.knowledge.config import KnowledgeConfig
from seal.knowledge.data import Passage
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.evaluate import Condition, conditions, no_update_tags, table
from seal.knowledge.self_edit import training_set


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cpt(run: Run, domain: KnowledgeDomain, passages: list[Passage], progress: Progress,
        policy_runs: list[Path] = (), lm: LoadedModel | None = None) -> Table:
    """Every CPT condition on `passages`; returns the table."""
    lm = lm or load_configured(run.config.model)
    for c in conditions(run.config, lm, domain, policy_runs):
        if c.name is None:
            _no_update(run, lm, domain, passages, c, progress)
        else:
            _condition(run, lm, domain, passages, c, progress)
    return table(run)


def _answer(run: Run, lm: LoadedModel, domain: KnowledgeDomain, passages: list[Passage], kind: str, key, tags,
            progress: Progress, bar: str, extra: dict | None = None, open_book: bool = False) -> None:
    """Answer the questions of every passage without a record under key(pid), `answer_chunk` passages
    per batch of generations, and record each passage's grades."""
    todo = [p for p in passages if run.get(key(p.id)) is None]
    progress.start(bar, bar, len(passages))
    progress.skip(bar, len(passages) - len(todo))
    size = run.config.cpt.answer_chunk
    for begin in range(0, len(todo), size):
        chunk = todo[begin:begin + size]
        for passage, scored in zip(chunk, domain.score_many(lm, chunk, open_book=open_book)):
            run.append(kind, key(passage.id), **tags(passage.id), **(extra or {}), **scored)
        progress.advance(bar, len(chunk))


def _no_update(run: Run, lm: LoadedModel, domain: KnowledgeDomain, passages: list[Passage], c: Condition,
               progress: Progress) -> None:
    row = c.model_row
    _answer(run, lm, domain, passages, "pre_update", lambda pid: f"eval/pre/{row}/{pid}",
            lambda pid: dict(condition=row, context_id=pid, **no_update_tags(c)), progress,
            f"answering: {row}", open_book=c.open_book)


def _condition(run: Run, lm: LoadedModel, domain: KnowledgeDomain, passages: list[Passage], c: Condition,
               progress: Progress) -> None:
    """One trained row: the self-edits (when `c.write`), the pooled update, then every question."""
    config, name, write = run.config, c.name, c.write
    tags = lambda pid: dict(condition=name, context_id=pid, row=c.kind, round=c.round)
    key = lambda pid: f"eval/eval/{name}/{pid}/0"
    if all(run.get(key(p.id)) is not None for p in passages):
        return
    if write is not None:
        record_samples(run, [(f"eval/samples/{name}/{p.id}", p, tags(p.id)) for p in passages],
                       write, config.self_edit.batch_size, ("eval", name), progress)
        failed = [p.id for p in passages if run.get(f"eval/samples/{name}/{p.id}").get("error")]
        if failed:  # one update on every passage: it waits until every self-edit could be written
            progress.log(f"{name}: {len(failed)} self-edit(s) could not be written (endpoint errors); "
                         "the row is left out, and --resume tries again")
            return
    folder = run.path / "cpt" / slug(name)
    # Rebuilt on every (re)start: tokenizing is cheap, and a store cut short by a kill is never reused.
    problems: dict[str, str] = {}
    owners: list[Passage] = []  # the passage of each sequence: what the teacher reads before it

    def texts():
        for passage, text in _sequences(run, config, passages, c.samples or name, write is not None, problems,
                                        c.inner.get("passage_items", config.inner_loop.passage_items)):
            owners.append(passage)
            yield text
    store = TokenStore.write(folder / "sequences", lm.tokenizer, texts(), config.cpt.max_seq_len)
    info = run.cached("cpt_data", f"cpt/{slug(name)}/data", lambda: dict(
        condition=name, sequences=len(store), tokens=store.n_tokens, passages=len(passages),
        unusable_self_edits=problems))
    cfg = config.cpt
    seed = derive_seed(config.seed, "cpt", name)
    updating = domain.with_objective(c.objective) if c.objective else domain
    objective = updating.objective
    adapter = folder / "adapter"
    saved = (adapter / "adapter_config.json").is_file()  # a resume loads it: nothing to teach
    examples = store if saved else teach_store(lm, updating, store, owners, objective, cfg.batch_size)
    progress.start("cpt", f"CPT update: {name} ({len(store)} sequences, {store.n_tokens} tokens)",
                   len(epoch_batches(len(store), cfg, seed)))
    precision = resolve_precision(config.model.precision, lm.device)
    with temporary_update(lm, examples, cfg, full=cfg.update == "full", seed=seed, precision=precision,
                          adapter_dir=adapter, on_step=lambda s, total: progress.advance("cpt"),
                          objective=objective) as stats:
        if stats is not None:
            run.append("cpt_train", f"cpt/{slug(name)}/train", condition=name, update=cfg.update,
                       objective=objective.describe(), train=stats.as_dict())
        _answer(run, lm, domain, passages, "self_edit_eval", key, lambda pid: dict(tags(pid), repeat=0),
                progress, f"answering: {name}", dict(valid=True, n_sequences=info["sequences"],
                                                    objective=objective.describe()))


def _sequences(run: Run, config: KnowledgeConfig, passages: list[Passage], name: str, with_self_edits: bool,
               problems: dict[str, str], passage_items: str = "whole") -> Iterator[tuple[Passage, str]]:
    """Each passage's training sequences in turn (read from its recorded self-edit), with the passage;
    a passage whose self-edit is unusable contributes its passage sequence only, and the reason is noted
    in `problems`."""
    cfg = config.inner_loop
    for p in passages:
        text = run.get(f"eval/samples/{name}/{p.id}")["self_edits"][0] if with_self_edits else None
        data = training_set(p, text, split_lines=cfg.split_lines, include_passage=cfg.include_passage,
                            max_lines=cfg.max_lines, item_format=cfg.item_format, passage_items=passage_items)
        if data.problem:
            problems[p.id] = data.problem
            data = training_set(p, None, item_format=cfg.item_format, passage_items=passage_items)
        yield from ((p, text) for text in data.sequences)
