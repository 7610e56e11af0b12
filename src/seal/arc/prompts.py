"""The text an ARC model reads and writes: a task's demonstrations and query as grids of digits, and an
answer grid. Its own module because tasks (token counts), TTT (training examples), the self-edit prompt
and prediction all use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from seal.arc.grids import to_text

if TYPE_CHECKING:
    from seal.arc.tasks import Example


def task_prompt(demos: list[Example], query: np.ndarray, sep: str = "") -> str:
    """Each demonstration as input and output grids, then the query's input (`sep` between a row's
    cells: grids.separator)."""
    parts = [f"input:\n{to_text(e.input, sep)}\noutput:\n{to_text(e.output, sep)}\n" for e in demos]
    return "".join(parts) + f"input:\n{to_text(query, sep)}\noutput:\n"


def answer_text(g: np.ndarray, sep: str = "") -> str:
    return to_text(g, sep) + "\n"
