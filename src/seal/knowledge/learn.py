"""`seal learn`: teach a model a set of documents, with questions the passages write for themselves.

1. The documents are read and split into passages (documents.py); skipped files are recorded.
2. Each passage writes its questions (questions.py), split into selection and held-out questions.
3. The model's closed-book score on the held-out questions is taken before anything is learned, and
   the open-book ceiling (each question asked with its passage).
4. The policy (the base model, or a SEAL run's policy with `--policy`) samples `learn.k` self-edits per
   passage; each is evaluated in the inner loop on the passage's *selection* questions, and the best
   is kept (a passage without selection questions keeps its first self-edit).
5. One update (LoRA, `learn` section) is trained on the pooled training sequences of every passage
   and its kept self-edit, and the held-out questions are asked again with it.
6. The output folder gets the adapter in PEFT's format (`PeftModel.from_pretrained(model, DIR)`), or
   with `merge` a whole checkpoint, a manifest (documents with content hashes, passages, questions,
   settings, policy) and report.md; it is written beside its place and renamed, so it exists only
   when complete.

Every step is a record of the run directory, so `--resume` redoes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from seal.core.generation import format_prompt, generate, resolve_precision, use_chat
from seal.core.inner_loop import teach_store
from seal.core.models import LoadedModel, load_model
from seal.core.progress import Progress
from seal.core.restem import EvalJob, derive_seed, evaluate_jobs, mean_reward, record_samples, self_edit_writer
from seal.core.runs import Run
from seal.core.token_store import TokenStore
from seal.core.training import epoch_batches, temporary_update
from seal.knowledge.data import DataError, Passage
from seal.knowledge.documents import Document, Skipped, split_passages
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.learned import Earlier, Item, LearnError, _by_document, _dump, _load, document_slug
from seal.knowledge.questions import Written, cloze_questions, model_questions, split_questions
from seal.knowledge.self_edit import training_set


def passages_of(documents: list[Document], count: Callable[[str], int], max_tokens: int) -> list[tuple[str, Passage]]:
    """(document path, passage) for every passage, in document order; a passage met twice is kept once."""
    out, seen = [], set()
    for doc in documents:
        for p in split_passages(doc, count, max_tokens):
            if p.id not in seen:
                seen.add(p.id)
                out.append((doc.path, p))
    return out


def question_writer(config, lm: LoadedModel) -> Callable[[list[Passage]], list[Written]]:
    """The configured writer, as passages -> their written questions."""
    q = config.questions
    if q.writer == "cloze":
        return lambda passages: [_at_most(cloze_questions(p), q.per_passage) for p in passages]
    t = config.teacher
    if t.base_url:
        from seal.core.endpoint import ChatEndpoint

        endpoint = ChatEndpoint(t.base_url, t.api_model, t.api_key_env, t.retries)
        complete = lambda prompts: [endpoint.complete(p, temperature=0.0, max_tokens=512) for p in prompts]
    else:
        writer = load_model(t.model, config.model.device, config.model.dtype) if t.model else lm

        def complete(prompts):
            chat = use_chat(writer, config.model.chat_template)
            gens = generate(writer, [format_prompt(writer, p, chat) for p in prompts], max_new_tokens=384,
                            batch_size=config.self_edit.batch_size,
                            precision=resolve_precision(config.model.precision, writer.device))
            return [g.text for g in gens]
    return lambda passages: [_at_most(w, q.per_passage) for w in model_questions(passages, complete, q.per_passage)]


def _at_most(written: Written, n: int) -> Written:
    return Written(written.questions[:n], written.dropped)


def prepare(run: Run, lm: LoadedModel, documents: list[Document], skipped: list[Skipped], count: Callable[[str], int],
            progress: Progress) -> list[Item]:
    """Passages and their questions, recorded once (a resumed run reads them back)."""
    config = run.config
    pairs = passages_of(documents, count, config.learn.max_passage_tokens)
    run.cached("learn", "learn/documents", lambda: dict(
        documents=[dict(path=d.path, title=d.title, sha256=d.sha256,
                        passages=[p.id for path, p in pairs if path == d.path]) for d in documents],
        skipped=[dict(path=s.path, reason=s.reason) for s in skipped]))
    document_of = {p.id: path for path, p in pairs}
    records = record_questions(run, lm, [p for _, p in pairs], "learn/questions/", progress,
                               lambda p: dict(document=document_of[p.id], title=p.title, context=p.context))
    if config.learn.k > 1 and not any(r["selection"] for r in records):
        raise LearnError(f"none of the {len(records)} passages got a selection question from the "
                         f"{config.questions.writer} writer (dropped: {_dropped_text(records)}), so nothing can choose "
                         f"between the learn.k={config.learn.k} self-edits; set learn.k: 1 to learn without choosing, "
                         "or use a stronger question writer (questions.writer, teacher.model)")
    return [Item(path, Passage(p.title, p.context, _load(r["selection"])), Passage(p.title, p.context, _load(r["held_out"])))
            for (path, p), r in zip(pairs, records)]


def self_questioned(run: Run, lm: LoadedModel, passages: list[Passage], progress: Progress) -> list[Passage]:
    """The passages with the selection half of questions they wrote themselves in place of their gold
    ones (reward.questions: self), written once per passage and recorded under questions/{id}; a
    passage that got no selection question keeps its gold ones (and is counted in the record). With
    reward.watch_gold, the gold questions of the others are asked too, unrewarded (`Passage.watched`)."""
    records = record_questions(run, lm, passages, "questions/", progress, lambda p: {})
    watch = run.config.reward.watch_gold
    out = []
    for p, record in zip(passages, records):
        selection = _load(record["selection"])
        out.append(Passage(p.title, p.context, selection or p.questions,
                           watched=p.questions if watch and selection else ()))
    if not any(r["selection"] for r in records):  # the run would be gold-rewarded throughout while saying "self"
        raise DataError(f"reward.questions: self: the {run.config.questions.writer} question writer wrote no usable "
                        f"selection question for any of the {len(passages)} training passages "
                        f"(dropped: {_dropped_text(records)}); use questions.writer: cloze, or a stronger writer "
                        "(teacher.model or teacher.base_url)")
    return out


def record_questions(run: Run, lm: LoadedModel, passages: list[Passage], prefix: str, progress: Progress,
                     extra: Callable[[Passage], dict]) -> list[dict]:
    """Write the questions of every passage without a record under prefix + id (its gold questions, if
    any, are not shown to the writer), split into selection and held-out, recorded as they are written;
    returns every passage's record and logs how many passages got questions and what was dropped."""
    config = run.config
    todo = [p for p in passages if run.get(prefix + p.id) is None]
    progress.start("questions", f"writing questions ({config.questions.writer})", len(passages))
    progress.skip("questions", len(passages) - len(todo))
    write = question_writer(config, lm)
    size = max(1, config.self_edit.batch_size)
    for begin in range(0, len(todo), size):
        chunk = todo[begin:begin + size]
        for p, written in zip(chunk, write([Passage(p.title, p.context) for p in chunk])):
            selection, held = split_questions(written.questions, config.questions.selection_share, config.seed, p.id)
            run.append("questions", prefix + p.id, context_id=p.id, selection=_dump(selection), held_out=_dump(held),
                       dropped=dict(written.dropped), gold_kept=bool(p.questions) and not selection, **extra(p))
        progress.advance("questions", len(chunk))
    records = [run.get(prefix + p.id) for p in passages]
    progress.log(f"questions ({config.questions.writer}): {sum(bool(r['selection']) for r in records)} of {len(records)} "
                 f"passages have selection questions, {sum(bool(r['held_out']) for r in records)} held-out ones "
                 f"({sum(len(r['selection']) + len(r['held_out']) for r in records)} kept; dropped: {_dropped_text(records)})")
    return records


def _dropped_text(records: list[dict]) -> str:
    dropped = Counter()
    for r in records:
        dropped.update(r["dropped"])
    return ", ".join(f"{reason} {n}" for reason, n in dropped.most_common()) or "none"






def score_held_out(run: Run, lm: LoadedModel, domain: KnowledgeDomain, items: list[Item], name: str,
                   progress: Progress, open_book: bool = False) -> None:
    """Closed-book (or open-book) scores on the held-out questions, recorded under learn/{name}/{id}."""
    scored = [i for i in items if i.held.questions]
    todo = [i for i in scored if run.get(f"learn/{name}/{i.id}") is None]
    progress.start(name, f"held-out questions: {name}", len(scored))
    progress.skip(name, len(scored) - len(todo))
    chunk = max(1, run.config.cpt.answer_chunk)
    for begin in range(0, len(todo), chunk):
        part = todo[begin:begin + chunk]
        for item, result in zip(part, domain.score_many(lm, [i.held for i in part], open_book=open_book)):
            run.append("held_out", f"learn/{name}/{item.id}", context_id=item.id, document=item.document, **result)
        progress.advance(name, len(part))


def select_self_edits(run: Run, lm: LoadedModel, domain: KnowledgeDomain, items: list[Item],
                      progress: Progress) -> dict[str, str]:
    """The kept self-edit of every passage: the best of k on its selection questions (k = 1: the one
    sampled, with no evaluation)."""
    config = run.config
    k = config.learn.k
    record_samples(run, [(f"learn/samples/{i.id}", i.selection, dict(context_id=i.id)) for i in items],
                   self_edit_writer(lm, domain, k, config), max(1, config.self_edit.batch_size // k), ("learn",), progress)
    if k == 1:  # nothing to choose between: no evaluation
        return {i.id: run.get(f"learn/samples/{i.id}")["self_edits"][0] for i in items}
    jobs = []
    for item in items:
        if not item.selection.questions:
            continue
        pre = run.cached("pre_update", f"learn/pre/{item.id}", lambda: dict(context_id=item.id, **domain.pre_update(lm, item.selection)))
        for s, text in enumerate(run.get(f"learn/samples/{item.id}")["self_edits"]):
            jobs.append(EvalJob(f"learn/eval/{item.id}/{s}", item.selection, text, pre, ("learn", item.id, s),
                                dict(context_id=item.id, sample=s), common_parts=("learn", item.id)))
    progress.start("evals", "choosing self-edits (selection questions)", len(jobs) * config.inner_loop.eval_times)
    results = evaluate_jobs(run, lm, domain, jobs, progress)
    kept = {}
    for item in items:
        texts = run.get(f"learn/samples/{item.id}")["self_edits"]
        rewards = [mean_reward(results.get(f"learn/eval/{item.id}/{s}")) for s in range(len(texts))]
        best = max(range(len(texts)), key=lambda s: (rewards[s] if rewards[s] is not None else -1.0, -s))
        kept[item.id] = texts[best]
    return kept




def learn(run: Run, lm: LoadedModel, domain: KnowledgeDomain, documents: list[Document], skipped: list[Skipped],
          count: Callable[[str], int], progress: Progress, earlier: Earlier | None = None) -> tuple[list[Item], dict[str, str]]:
    """Every step but writing the output folder; `lm` is restored at the end. With `earlier`, only the
    new documents are learned: pooled, the earlier adapter goes on training on the new sequences and a
    replayed sample of the earlier ones, and the earlier passages' held-out questions are asked again;
    per document, each new document gets its own adapter and nothing earlier is touched."""
    items = prepare(run, lm, documents, skipped, count, progress)
    score_held_out(run, lm, domain, items, "before", progress)
    score_held_out(run, lm, domain, items, "open-book", progress, open_book=True)
    kept = select_self_edits(run, lm, domain, items, progress)
    config, cfg = run.config, run.config.learn
    precision = resolve_precision(config.model.precision, lm.device)
    if cfg.mode == "per-document":
        order = [d["path"] for d in (earlier.manifest["documents"] if earlier else []) + run.get("learn/documents")["documents"]]
        for path, group in _by_document(items).items():
            name = document_slug(order.index(path), path)
            _update(run, lm, domain, config, group, list(_sequences(config, group, kept)), [], f"adapters/{name}",
                    None, progress, precision, name)
        return items, kept
    sequences = list(_sequences(config, items, kept))
    replay = replay_sample(config, earlier, len(sequences), run) if earlier else []
    start = earlier.folder if earlier else None
    _update(run, lm, domain, config, items, sequences, replay, "adapter", start, progress, precision, "all",
            also=earlier.items if earlier else [])
    return items, kept


def _update(run: Run, lm: LoadedModel, domain: KnowledgeDomain, config, items: list[Item],
            sequences: list[tuple[Passage, str]], replay: list[tuple[Passage, str]], folder: str, start_from,
            progress: Progress, precision: str, name: str, also: list[Item] = ()) -> None:
    """One update on the items' training `sequences` (and `replay`), each (passage, text), with the
    learn.objective's loss (a distilling one's teacher: the model as it is, reading the sequence's
    passage), then their held-out questions asked with it (and those of `also`, the earlier passages,
    under "after-add")."""
    cfg = config.learn
    sequences = sequences + replay
    store = TokenStore.write(run.path / "learn" / f"sequences-{name}", lm.tokenizer, (t for _, t in sequences),
                             cfg.max_seq_len)
    seed = derive_seed(config.seed, "learn", name)
    updating = domain.with_objective(cfg.objective) if cfg.objective else domain
    objective = updating.objective
    saved = (run.path / folder / "adapter_config.json").is_file()  # a resume loads it: nothing to teach
    examples = store if saved else teach_store(lm, updating, store, [p for p, _ in sequences], objective,
                                               cfg.batch_size)
    progress.start("update", f"update {name} ({len(store)} sequences, {store.n_tokens} tokens)",
                   len(epoch_batches(len(store), cfg, seed)))
    with temporary_update(lm, examples, cfg, full=False, seed=seed, precision=precision, adapter_dir=run.path / folder,
                          on_step=lambda s, total: progress.advance("update"), start_from=start_from,
                          objective=objective) as stats:
        if stats is not None:
            run.append("learn_train", f"learn/update/{name}", sequences=len(store), replayed=len(replay),
                       tokens=store.n_tokens, objective=objective.describe(), train=stats.as_dict())
        score_held_out(run, lm, domain, items, "after", progress)
        if also:
            score_held_out(run, lm, domain, list(also), "after-add", progress)


def replay_sample(config, earlier: Earlier, n_new: int, run: Run) -> list[tuple[Passage, str]]:
    """learn.replay x n_new of the earlier passages' training sequences, a seeded sample."""
    import random

    pool = list(_sequences(config, earlier.items, earlier.kept))
    random.Random(derive_seed(config.seed, "replay", run.path.name)).shuffle(pool)
    return pool[:round(config.learn.replay * n_new)]






def _sequences(config, items: list[Item], kept: dict[str, str]):
    """Each item's training sequences from its kept self-edit, made as the inner loop that selected it
    makes them (inner_loop.item_format, passage_items), each with its passage."""
    cfg = config.inner_loop
    keyed = dict(item_format=cfg.item_format, passage_items=cfg.passage_items)
    for item in items:
        data = training_set(item.selection, kept.get(item.id), split_lines=cfg.split_lines,
                            include_passage=cfg.include_passage, max_lines=cfg.max_lines, **keyed)
        if data.problem:  # an unusable self-edit: the passage alone
            data = training_set(item.selection, None, include_passage=True, **keyed)
        yield from ((item.selection, text) for text in data.sequences)
















def check_documents(run: Run, documents: list[Document]) -> None:
    """A resumed run must read the documents it started with."""
    recorded = run.get("learn/documents")
    if recorded is None:
        return
    before = {(d["path"], d["sha256"]) for d in recorded["documents"]}
    now = {(d.path, d.sha256) for d in documents}
    if before != now:
        changed = sorted({p for p, _ in before ^ now})
        raise LearnError(f"the documents changed since this run started ({', '.join(changed[:3])}); start a new run")












