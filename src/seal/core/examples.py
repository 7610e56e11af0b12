"""A training example as token ids and labels: what every data builder produces and every training
loop consumes. No torch here, so that data code (ARC's TTT sets, token stores) can build examples
without importing it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TeacherDist:
    """A teacher's next-token distribution at each target token of one example, for distillation
    (core/objectives.py): its top-k token ids (n x k), their log-probabilities (n x k) and the log of the
    probability mass of every other token (n), as tensors."""

    ids: Any
    logp: Any
    tail: Any


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken
    weight: float = 1.0  # the example's loss weight in a weighted training loop (RLOO's advantage)
    reference: list[float] | None = None  # each target token's NLL under the policy that wrote it (RLOO's clip)
    teacher: TeacherDist | None = None  # the teacher's distribution at each target token (distillation)
