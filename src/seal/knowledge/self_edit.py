"""From a self-edit to training sequences, with guards against degenerate model output.

A self-edit is free text written by the model. Each usable line becomes one training sequence prefixed
by the passage title, and the passage itself is added as one more sequence. Lines that are
duplicates or repetition loops are dropped, and the number of lines is capped: a 135M model at
temperature 1.0 often writes one word 97 times, which would otherwise cost hundreds of training steps
and teach nothing. What was dropped is reported so that it can be recorded.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from seal.knowledge.data import Passage

_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\d+\))\s*")


@dataclass
class TrainingSet:
    sequences: list[str]
    n_lines: int = 0  # self-edit lines used
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    problem: str | None = None  # set when the self-edit is unusable: a recorded zero reward


def is_repetitive(line: str, max_share: float = 0.5, min_words: int = 8) -> bool:
    """True when one word makes up more than `max_share` of a line of at least `min_words` words."""
    words = line.lower().split()
    if len(words) < min_words:
        return False
    return Counter(words).most_common(1)[0][1] / len(words) > max_share


def training_set(passage: Passage, self_edit: str | None, *, split_lines: bool = True,
                 include_passage: bool = True, max_lines: int = 64, min_chars: int = 8) -> TrainingSet:
    """The inner loop's training sequences for one self-edit (None: the passage alone)."""
    passage_seq = [f"{passage.title}\n{passage.context}"] if include_passage else []
    if self_edit is None:
        return TrainingSet(sequences=passage_seq)
    text = self_edit.strip()
    if not text:
        return TrainingSet(sequences=[], problem="empty self-edit")
    if not split_lines:
        return TrainingSet(sequences=[f"{passage.title}\n{text}"] + passage_seq, n_lines=1)

    dropped: Counter[str] = Counter()
    kept: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = _LIST_MARKER.sub("", raw).strip()
        if not line:
            continue
        if len(line) < min_chars:
            dropped["too short"] += 1
        elif line.lower() in seen:
            dropped["duplicate"] += 1
        elif is_repetitive(line):
            dropped["repetitive"] += 1
        elif len(kept) >= max_lines:
            dropped["over max_lines"] += 1
        else:
            seen.add(line.lower())
            kept.append(line)
    if not kept:
        reason = ", ".join(f"{n} {r}" for r, n in dropped.items()) or "no text"
        return TrainingSet(sequences=[], dropped=dict(dropped), problem=f"no usable line ({reason})")
    return TrainingSet(sequences=[f"{passage.title}\n{line}" for line in kept] + passage_seq,
                       n_lines=len(kept), dropped=dict(dropped))
