"""Questions a passage writes for itself, when nobody wrote gold ones.

Two writers:
- `cloze`: no model. A sentence of the passage with one salient span (a date, a number, a
  capitalised name) blanked out becomes "Fill in the blank: ...", the span its answer, so the answer
  is always a span of the passage.
- `model`: a model (the policy itself, a larger local model, or an endpoint) is asked for short
  questions with answers copied from the passage. A question is dropped, and counted, when its answer
  is not a span of the passage after SQuAD normalisation (unsupported), when it repeats another
  (duplicate), when it copies a stretch of the passage (copied), or when its answer is inside the
  question (trivial).

Each passage's questions are then split, seeded, into a selection set (what chooses self-edits) and a
held-out set (what scores the result, never used for selection or training). No torch here.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from seal.knowledge.data import Passage, Question
from seal.knowledge.documents import sentences
from seal.knowledge.grading import normalize_answer

MONTHS = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
DATE = re.compile(rf"\b(?:{MONTHS}\s+\d{{1,2}}(?:,\s*\d{{4}})?|\d{{1,2}}\s+{MONTHS}(?:\s+\d{{4}})?|{MONTHS}\s+\d{{4}})\b")
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w])")
NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][\w'-]*)*")
BLANK = "_____"


@dataclass
class Written:
    """A passage's questions and what was dropped on the way, by reason."""

    questions: list[Question]
    dropped: Counter = field(default_factory=Counter)


def salient_span(sentence: str) -> str | None:
    """The span a cloze question asks for: a date, else a number, else the longest capitalised name
    that is not just the sentence's first word; None when there is none or it is most of the sentence."""
    words = sentence.split()
    for pattern in (DATE, NUMBER):
        m = pattern.search(sentence)
        if m:
            return m.group(0).strip(" ,") if len(m.group(0).split()) < len(words) / 2 else None
    names = [m for m in NAME.finditer(sentence) if not (m.start() == 0 and len(m.group(0).split()) == 1)]
    if not names:
        return None
    best = max(names, key=lambda m: (len(m.group(0)), -m.start())).group(0)
    return best if len(best.split()) < len(words) / 2 else None


def cloze_questions(passage: Passage, min_words: int = 6) -> Written:
    out, dropped = [], Counter()
    for s in sentences(passage.context):
        if len(s.split()) < min_words:
            dropped["short sentence"] += 1
            continue
        span = salient_span(s)
        if span is None:
            dropped["no salient span"] += 1
            continue
        out.append(Question(f"Fill in the blank: {s.replace(span, BLANK, 1)}", (span,)))
    return Written(out, dropped)


QUESTION_PROMPT = """Read the passage and write {n} short questions that it answers.
Give each answer copied word for word from the passage, a few words long. Write them as:
Q: <question>
A: <answer>

Title: {title}
Passage: {passage}"""

QA = re.compile(r"^\s*Q\s*[:.)]\s*(.+?)\s*\n\s*A\s*[:.)]\s*(.+?)\s*$", re.M)


def parse_questions(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from a model's "Q: ... / A: ..." lines; anything else is ignored."""
    return [(q.strip(), a.strip()) for q, a in QA.findall(text)]


def check_questions(passage: Passage, pairs: list[tuple[str, str]]) -> Written:
    """Keep the pairs a passage supports: see the module's docstring for the reasons to drop."""
    context = normalize_answer(passage.context)
    out, seen, dropped = [], set(), Counter()
    for q, a in pairs:
        nq, na = normalize_answer(q), normalize_answer(a)
        if not na or f" {na} " not in f" {context} ":
            dropped["unsupported"] += 1
        elif nq in seen:
            dropped["duplicate"] += 1
        elif len(nq.split()) >= 8 and nq in context:
            dropped["copied"] += 1
        elif f" {na} " in f" {nq} ":
            dropped["trivial"] += 1
        else:
            seen.add(nq)
            out.append(Question(q, (a,)))
    return Written(out, dropped)


def model_questions(passages: list[Passage], complete: Callable[[list[str]], list[str]], n: int = 6) -> list[Written]:
    """Questions for each passage from `complete(prompts) -> texts` (a local model or an endpoint)."""
    prompts = [QUESTION_PROMPT.format(n=n, title=p.title, passage=p.context) for p in passages]
    return [check_questions(p, parse_questions(text)) for p, text in zip(passages, complete(prompts))]


def split_questions(questions: list[Question], selection_share: float, seed: int, key: str) -> tuple[list[Question], list[Question]]:
    """(selection, held-out): a seeded shuffle per passage (`key`), cut so that both get at least one
    question when there are two or more; a single question goes to selection (the passage is then
    learned but not scored)."""
    order = list(questions)
    random.Random(f"{seed}/{key}").shuffle(order)
    if len(order) < 2:
        return order, []
    cut = min(len(order) - 1, max(1, round(selection_share * len(order))))
    return order[:cut], order[cut:]
