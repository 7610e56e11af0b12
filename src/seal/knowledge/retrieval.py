"""TF-IDF retrieval over passages: which passage a question is about (routing to per-document adapters)."""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9]+")
# Words that say nothing about which passage a question is about.
_STOP = {
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "had", "has",
    "have", "he", "her", "his", "how", "in", "is", "it", "its", "of", "on", "or", "she", "that", "the",
    "their", "them", "they", "this", "to", "was", "were", "what", "when", "where", "which", "who",
    "whom", "whose", "why", "with",
}


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class TfIdf:
    def __init__(self, documents: list[str]):
        self.docs = [Counter(words(d)) for d in documents]
        df = Counter(w for d in self.docs for w in d)
        n = len(documents)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()}
        self.vectors = [self._vector(d) for d in self.docs]

    def _vector(self, counts: Counter) -> dict[str, float]:
        v = {w: c * self.idf.get(w, 0.0) for w, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    def scores(self, query: str) -> list[float]:
        q = self._vector(Counter(words(query)))
        return [sum(x * d.get(w, 0.0) for w, x in q.items()) for d in self.vectors]

    def best(self, query: str, among: list[int] | None = None) -> int:
        """The index of the most similar document (of `among`, when given); ties go to the first."""
        scores = self.scores(query)
        candidates = among if among is not None else range(len(scores))
        return max(candidates, key=lambda i: (scores[i], -i))
