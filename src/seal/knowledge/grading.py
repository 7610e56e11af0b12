"""Grading short answers: SQuAD-normalised exact match and token F1, contains-answer, an optional judge.

Every score is the maximum over the question's gold answers, as in the official SQuAD evaluation.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (official SQuAD)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: list[str]) -> float:
    return max(_f1(prediction, g) for g in golds)


def contains_answer(prediction: str, golds: list[str]) -> float:
    """1 when a normalised gold answer appears as a whole-word span of the normalised prediction."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in pred for g in golds))


# --- answer discrimination: does the model know which span answers the question? ------------------
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of|de|the|van|von)?\s*[A-Z][\w'-]*)*")
_STOP_NAMES = {"The", "A", "An", "In", "On", "At", "It", "He", "She", "They", "This", "That", "These", "Those",
               "His", "Her", "Its", "Their", "As", "By", "For", "From", "With", "After", "Before", "During", "When"}


def _kind(text: str) -> str:
    if any(ch.isdigit() for ch in text):
        return "number"
    return "name" if text[:1].isupper() else "other"


def _overlaps(span: str, golds: list[str]) -> bool:
    s = normalize_answer(span)
    return not s or any(s == (g := normalize_answer(x)) or s in g or (g and g in s) for x in golds)


def distractors(passage_text: str, golds: list[str], other_answers: list[str], n: int) -> list[str]:
    """Up to n spans of the passage that do not answer the question: the answers of the passage's other
    questions first, then numbers and dates (when the gold answer has a digit) or names (when it is
    capitalised) in the order the passage has them, then spans of the other kind; never a span that
    equals, contains or lies inside a gold answer."""
    if n <= 0:
        return []
    kind = _kind(golds[0]) if golds else "other"
    numbers = [m.group(0) for m in _NUMBER.finditer(passage_text)]
    names = [m.group(0).strip() for m in _NAME.finditer(passage_text) if m.group(0).strip() not in _STOP_NAMES]
    same, other = (numbers, names) if kind == "number" else (names, numbers)
    out, seen = [], set()
    for span in [*other_answers, *same, *other]:
        key = normalize_answer(span)
        if key in seen or _overlaps(span, golds):
            continue
        seen.add(key)
        out.append(span)
        if len(out) == n:
            break
    return out


def discrimination(gold_loglik: float | None, distractor_logliks: list[float]) -> float | None:
    """The share of distractors whose likelihood the best gold answer beats (None: no distractor)."""
    if gold_loglik is None or not distractor_logliks:
        return None
    return sum(gold_loglik > d for d in distractor_logliks) / len(distractor_logliks)
