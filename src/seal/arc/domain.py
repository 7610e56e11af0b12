"""The ARC domain's inner loop: test-time training with the configuration a self-edit chose.

`evaluate` parses the self-edit, builds the TTT set from the task's demonstrations, trains a fresh
LoRA with the chosen learning rate and epochs, predicts the test outputs by voting over views, and
removes the adapter. The reward is 1 when every test output is among the attempts. `evaluate_batch`
trains many self-edits' adapters together in one adapter bank (core/multi_lora.py), each with its
own recipe, and predicts through all of them in shared batches.
"""

from __future__ import annotations

from seal.arc import self_edit as se
from seal.arc import ttt
from seal.arc.config import ArcConfig
from seal.arc.predict import predict
from seal.arc.tasks import Task
from seal.core.domain import Domain
from seal.core.generation import resolve_precision
from seal.core.models import LoadedModel
from seal.core.multi_lora import adapter_bank, train_bank
from seal.core.training import fresh_adapter, train


class ArcDomain(Domain):
    """Plugs few-shot ARC with test-time training into the ReST-EM core."""

    name = "arc"
    batched = True
    checks_self_edits = True

    def __init__(self, config: ArcConfig):
        self.config = config
        il = config.inner_loop
        self.fallback = ttt.Recipe(lr=il.lr, epochs=il.epochs)

    # --- what the core asks of a domain -------------------------------------------------------
    @property
    def prefill(self) -> str:
        return self.config.self_edit.prefill

    def context_id(self, task: Task) -> str:
        return task.id

    def self_edit_prompt(self, task: Task) -> str:
        return se.prompt(task, self.config.self_edit.lr_range, self.config.self_edit.epochs_range)

    def parse(self, text: str | None) -> se.Parsed:
        c = self.config.self_edit
        return se.parse(text, self.fallback, c.lr_range, c.epochs_range, c.out_of_range)

    def self_edit_ok(self, text: str) -> bool:
        """Whether a sampled self-edit is usable; the core re-samples one that is not."""
        return self.parse(text).problem is None

    def pre_update(self, lm: LoadedModel, task: Task) -> dict:
        """In-context learning: the model as it is, no TTT."""
        result = predict(lm, [(task, None)], self.config.predict, precision=self.precision(lm))[0]
        return dict(reward=float(result["solved"]), **result)

    def evaluate(self, lm: LoadedModel, task: Task, self_edit: str | None, seed: int, pre: dict) -> dict:
        base, cfg, examples = self._prepare(lm, task, self_edit, seed, pre)
        if examples is None:
            return base
        with fresh_adapter(lm, cfg, seed) as wrapped:
            stats = train(wrapped, examples, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id,
                          device=lm.device, precision=self.precision(lm))
            result = predict(lm, [(task, None)], self.config.predict, precision=self.precision(lm))[0]
        return self._trained(base, stats, result)

    def evaluate_batch(self, lm: LoadedModel, items: list[tuple]) -> list[dict]:
        """`evaluate` for several (task, self_edit, seed, pre) at once, one adapter each in one bank."""
        results: list[dict | None] = [None] * len(items)
        usable = []
        for i, (task, text, seed, pre) in enumerate(items):
            base, cfg, examples = self._prepare(lm, task, text, seed, pre)
            if examples is None:
                results[i] = base
            else:
                usable.append((i, base, cfg, examples))
        if usable:
            seeds = [items[i][2] for i, *_ in usable]
            with adapter_bank(lm, self.config.inner_loop, seeds) as bank:
                stats = train_bank(lm, bank, [ex for *_, ex in usable], [cfg for _, _, cfg, _ in usable],
                                   seeds=seeds, precision=self.precision(lm),
                                   max_tokens=self.config.inner_loop.tokens_per_forward)
                predicted = predict(lm, [(items[i][0], k) for k, (i, *_) in enumerate(usable)],
                                    self.config.predict, precision=self.precision(lm))
            for (i, base, _, _), st, res in zip(usable, stats, predicted):
                results[i] = self._trained(base, st, res)
        return results

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
        examples, too_long = ttt.examples(lm.tokenizer, data.items, recipe.strategy, il.end_marker, il.max_seq_len)
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

    def precision(self, lm: LoadedModel) -> str:
        return resolve_precision(self.config.model.precision, lm.device)
