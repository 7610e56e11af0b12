"""The label-free reward (`reward.metric: teacher`): how far an update carries the model toward what it
answers with the passage in front of it, on questions it wrote itself. No gold answer is read.

For each training passage:
- its probes are the selection half of the questions written for it (`reward.questions: self`, the
  `questions` section). Self-edits never train on them;
- the teacher is the model as the run starts, reading the passage in the answer prompt. It answers
  each probe greedily, and its answers replace the written ones;
- the passage's anchor is the geometric-mean probability of the teacher's answers, closed-book and
  open-book, both before any update.

An updated model's reward is that probability without the passage, as a share of the gap between the
two anchors: 0 is no better than before, 1 is as likely as with the passage in the prompt
(`KnowledgeDomain._grade`). A passage is recorded once, under teacher/{id}. A passage is left out, and
counted, when the teacher answers none of its probes or its open book is not ahead of its closed book.
"""

from __future__ import annotations

import math

from seal.core.generation import completion_logprobs, format_prompt, generate
from seal.core.models import LoadedModel
from seal.core.progress import Progress
from seal.core.runs import Run
from seal.core.stats import mean
from seal.knowledge.data import DataError, Passage, Question
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.prompts import answer_prompt

MIN_GAP = 1e-4  # an open book ahead by less than this gives no signal to share out


def teacher_probes(run: Run, lm: LoadedModel, passages: list[Passage], progress: Progress) -> list[Passage]:
    """The passages (with their self-written questions) as the label-free reward scores them: each
    question answered by the teacher, and the passage's anchor. Recorded as computed; a resume reads them."""
    domain = KnowledgeDomain(run.config)
    todo = [p for p in passages if run.get(f"teacher/{p.id}") is None]  # (gold questions kept by a passage
    #                                     that wrote none are answered too, but the passage is left out below)
    progress.start("teacher", "the teacher's answers (label-free reward)", len(passages))
    progress.skip("teacher", len(passages) - len(todo))
    size = max(1, run.config.self_edit.batch_size)
    for begin in range(0, len(todo), size):
        chunk = todo[begin:begin + size]
        for p, record in zip(chunk, _teach(lm, domain, chunk)):
            run.append("teacher_probes", f"teacher/{p.id}", context_id=p.id, **record)
        progress.advance("teacher", len(chunk))
    out, left_out = [], []
    for p in passages:
        r = run.get(f"teacher/{p.id}")
        written = run.get(f"questions/{p.id}")
        if not (written and written["selection"]) or not r["probes"] or r["open"] - r["closed"] < MIN_GAP:
            left_out.append(p.id)
            continue
        asked = tuple(Question(q["question"], (q["answer"],)) for q in r["probes"])
        out.append(Passage(p.title, p.context, asked, watched=p.watched, anchor=(r["closed"], r["open"])))
    progress.log(f"label-free reward: {len(out)} of {len(passages)} passages have a teacher signal"
                 + (f"; left out (no self-written question, none answered, or the open book not ahead): {len(left_out)}"
                   if left_out else ""))
    if not out:
        raise DataError(f"reward.metric teacher: no training passage has a teacher signal (of {len(passages)}: the "
                        "teacher answered none of the probes, or the open book is not ahead of the closed book)")
    return out


def _teach(lm: LoadedModel, domain: KnowledgeDomain, passages: list[Passage]) -> list[dict]:
    """Per passage: the teacher's greedy open-book answer to each of its questions (an empty one dropped),
    and the geometric-mean probability of those answers without and with the passage in the prompt."""
    cfg = domain.config.answer
    chat, precision = cfg.prompt_style == "chat", domain.precision(lm)
    prompt = lambda p, q, book: format_prompt(lm, answer_prompt(cfg.prompt_style, p.title, q.question,
                                                                p.context if book else None), chat=chat)
    asked = [(p, q) for p in passages for q in domain.questions(p)]
    answers = generate(lm, [prompt(p, q, True) for p, q in asked], max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.batch_size, stop_at_newline=not chat, precision=precision)
    kept = [(p, q, a.text.strip()) for (p, q), a in zip(asked, answers) if a.text.strip()]
    likely = {book: completion_logprobs(lm, [prompt(p, q, book) for p, q, _ in kept], [a for _, _, a in kept],
                                        batch_size=cfg.batch_size, precision=precision) for book in (False, True)}
    out = []
    for p in passages:
        mine = [i for i, (owner, _, _) in enumerate(kept) if owner is p]
        geo = lambda book: mean(math.exp(likely[book][i]) for i in mine) if mine else None
        out.append(dict(probes=[dict(question=kept[i][1].question, answer=kept[i][2]) for i in mine],
                        dropped=len(domain.questions(p)) - len(mine), closed=geo(False), open=geo(True)))
    return out
