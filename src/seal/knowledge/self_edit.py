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
from seal.knowledge.documents import sentences

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


# How a training item is keyed: the text before each line (inner_loop.item_format).
ITEM_FORMATS = {
    "title": "{title}\n{line}",  # the title on a line of its own
    "topic": "Topic: {title}\n{line}",  # the key the answer prompt asks questions after
}


def item_template(item_format: str) -> str:
    """A built-in item format's template, or the format itself (a template with {title} and {line})."""
    return ITEM_FORMATS.get(item_format, item_format)


def passage_sequences(passage: Passage, item_format: str = "title", passage_items: str = "whole") -> list[str]:
    """The passage as training items: one sequence, or one per sentence (`passage_items`), keyed."""
    template = item_template(item_format)
    parts = [passage.context] if passage_items == "whole" else sentences(passage.context)
    return [template.format(title=passage.title, line=part) for part in parts]


def training_set(passage: Passage, self_edit: str | None, *, split_lines: bool = True,
                 include_passage: bool = True, max_lines: int = 64, min_chars: int = 8,
                 item_format: str = "title", passage_items: str = "whole") -> TrainingSet:
    """The inner loop's training sequences for one self-edit (None: the passage alone): each line after
    its key (`item_format`), then the passage (`passage_items`: whole, or its sentences)."""
    passage_seq = passage_sequences(passage, item_format, passage_items) if include_passage or self_edit is None else []
    template = item_template(item_format)
    if self_edit is None:
        return TrainingSet(sequences=passage_seq)
    text = self_edit.strip()
    if not text:
        return TrainingSet(sequences=[], problem="empty self-edit")
    if not split_lines:
        return TrainingSet(sequences=[template.format(title=passage.title, line=text)] + passage_seq, n_lines=1)

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
    return TrainingSet(sequences=[template.format(title=passage.title, line=line) for line in kept] + passage_seq,
                       n_lines=len(kept), dropped=dict(dropped))
