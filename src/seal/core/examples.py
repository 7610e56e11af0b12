"""A training example as token ids and labels: what every data builder produces and every training
loop consumes. No torch here, so that data code (ARC's TTT sets, token stores) can build examples
without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken
    weight: float = 1.0  # the example's loss weight in a weighted training loop (RLOO's advantage)
    reference: list[float] | None = None  # each target token's NLL under the policy that wrote it (RLOO's clip)
