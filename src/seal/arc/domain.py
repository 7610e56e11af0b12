"""The ARC domain's inner loop: test-time training with the configuration a self-edit chose.

`prepare` parses the self-edit and builds the TTT set from the task's demonstrations with the chosen
learning rate and epochs; core/inner_loop.py trains it (one adapter at a time, or many in one adapter
bank, each with its own recipe); `score_updated` predicts the test outputs by voting over views. The
reward is 1 when every test output is among the attempts.
"""

from __future__ import annotations

from seal.arc import self_edit as se
from seal.arc import ttt
from seal.arc.config import ArcConfig
from seal.arc.predict import predict
from seal.arc.tasks import Task
from seal.core.domain import Domain
from seal.core.inner_loop import Update
from seal.core.models import LoadedModel


class ArcDomain(Domain):
    """Plugs few-shot ARC with test-time training into the ReST-EM core."""

    name = "arc"
    batched = True
    checks_self_edits = True

    def __init__(self, config: ArcConfig, sep: str = ""):
        self.config = config
        self.sep = sep  # between a grid row's cells (data.cell_separator resolved for the model: arc.grids.grid_separator)
        il = config.inner_loop
        self.fallback = ttt.Recipe(lr=il.lr, epochs=il.epochs)

    # --- what the core asks of a domain -------------------------------------------------------
    @property
    def prefill(self) -> str:
        return self.config.self_edit.prefill

    def context_id(self, task: Task) -> str:
        return task.id

    def self_edit_prompt(self, task: Task) -> str:
        return se.prompt(task, self.config.self_edit.lr_range, self.config.self_edit.epochs_range, self.sep)

    def parse(self, text: str | None) -> se.Parsed:
        c = self.config.self_edit
        return se.parse(text, self.fallback, c.lr_range, c.epochs_range, c.out_of_range)

    def self_edit_ok(self, text: str) -> bool:
        """Whether a sampled self-edit is usable; the core re-samples one that is not."""
        return self.parse(text).problem is None

    def pre_update(self, lm: LoadedModel, task: Task) -> dict:
        """In-context learning: the model as it is, no TTT."""
        result = predict(lm, [(task, None)], self.config.predict, precision=self.precision(lm), sep=self.sep)[0]
        return dict(reward=float(result["solved"]), **result)

    # --- the inner loop's parts (core/inner_loop.py trains) ---------------------------------------
    def prepare(self, lm: LoadedModel, task: Task, text: str | None, seed: int, pre: dict) -> Update:
        """The TTT examples of the self-edit's configuration and its recipe (lr, epochs), or an unusable
        record (a zero reward with the reason)."""
        base, cfg, examples = self._prepare(lm, task, text, seed, pre)
        return Update(base) if examples is None else Update(base, examples, cfg)

    def score_updated(self, lm: LoadedModel, tasks: list[Task], adapters: list[int] | None) -> list[dict]:
        routed = [(t, None) for t in tasks] if adapters is None else list(zip(tasks, adapters))
        return predict(lm, routed, self.config.predict, precision=self.precision(lm), sep=self.sep)

    def finish(self, record: dict, stats, result: dict, pre: dict) -> dict:
        return self._trained(record, stats, result)

    # --- the pieces -----------------------------------------------------------------------------
    def _prepare(self, lm: LoadedModel, task: Task, text: str | None, seed: int, pre: dict):
        """(record so far, the adapter's recipe, its TTT examples); examples None when unusable, and
        then the record is the finished zero-reward result."""
        il = self.config.inner_loop
        parsed = self.parse(text)
        base = dict(task_id=task.id, pre_reward=pre["reward"], **parsed.as_dict())
        if parsed.problem:
            return dict(base, valid=False, reward=0.0, solved=False, tests=None), None, None
        recipe = parsed.recipe
        data = ttt.build(task, recipe, seed=seed, leave_two_out=il.leave_two_out,
                         colour_permutations=il.colour_permutations,
                         example_permutations=il.example_permutations, max_examples=il.max_examples)
        examples, too_long = ttt.examples(lm.tokenizer, data.items, recipe.strategy, il.end_marker, il.max_seq_len, self.sep)
        base["ttt"] = dict(examples=len(examples), made=data.made, duplicates=data.duplicates,
                           too_large=data.too_large, lossy=data.lossy, too_long=too_long)
        if not examples:
            problem = f"no TTT example fits inner_loop.max_seq_len={il.max_seq_len}"
            return dict(base, valid=False, problem=problem, reward=0.0, solved=False, tests=None), None, None
        cfg = il.model_copy(update=dict(lr=recipe.lr, epochs=recipe.epochs))
        return base, cfg, examples

    @staticmethod
    def _trained(base: dict, stats, result: dict) -> dict:
        return dict(base, valid=True, train=stats.as_dict(), reward=float(result["solved"]), **result)

