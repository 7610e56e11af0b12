"""The knowledge domain's inner loop: score a model on a passage's questions, and evaluate a self-edit.

`evaluate` trains a fresh LoRA on the self-edit's sequences, answers the passage's questions without
the passage, grades them, and removes the adapter again. `evaluate_batch` does the same for many
self-edits at once: their adapters trained together in one adapter bank (core/multi_lora.py), their
questions answered in shared batches, each row through its own adapter.
"""

from __future__ import annotations

import copy
import math
import time

from seal.core.domain import Domain
from seal.core.endpoint import Judge
from seal.core.generation import completion_logprobs, format_prompt, generate, resolve_precision
from seal.core.models import LoadedModel
from seal.core.multi_lora import adapter_bank, train_bank
from seal.core.stats import mean
from seal.core.training import fresh_adapter, lm_examples, train
from seal.knowledge.config import KnowledgeConfig
from seal.knowledge.data import Passage
from seal.knowledge.grading import contains_answer, exact_match, token_f1
from seal.knowledge.prompts import answer_prompt, load_template, self_edit_prompt
from seal.knowledge.self_edit import training_set

METRICS = ("em", "f1", "contains", "loglik", "judge")


class KnowledgeDomain(Domain):
    """Plugs the knowledge-incorporation task into the ReST-EM core."""

    name = "knowledge"
    batched = True

    def __init__(self, config: KnowledgeConfig, judge: Judge | None = None):
        self.config = config
        self.judge = judge
        self.template = load_template(config.self_edit.prompt)

    def with_prompt(self, style: str) -> KnowledgeDomain:
        """The same domain asking for self-edits in another prompt style (or template file)."""
        other = copy.copy(self)
        other.template = load_template(style)
        return other

    # --- what the core asks of a domain -------------------------------------------------------
    def context_id(self, passage: Passage) -> str:
        return passage.id

    def context_group(self, passage: Passage) -> str:
        return passage.title  # the article: passages of one article are never split between training and scoring

    def self_edit_prompt(self, passage: Passage) -> str:
        return self_edit_prompt(self.template, passage)

    def source_text(self, passage: Passage) -> str:
        return passage.context

    def pre_update(self, lm: LoadedModel, passage: Passage) -> dict:
        return self.score(lm, passage)

    def evaluate(self, lm: LoadedModel, passage: Passage, self_edit: str | None, seed: int, pre: dict) -> dict:
        """Train a fresh adapter on the self-edit (None: the passage alone), then score. Never raises
        for bad model output: an unusable self-edit is a zero reward with the reason recorded."""
        base, data = self._prepare(passage, self_edit, pre)
        if data.problem:
            return self._unusable(passage, base, data.problem)
        cfg = self.config.inner_loop
        examples = lm_examples(lm.tokenizer, data.sequences, cfg.max_seq_len)
        with fresh_adapter(lm, cfg, seed) as wrapped:
            stats = train(wrapped, examples, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id,
                          device=lm.device, precision=self.precision(lm))
            scored = self.score(lm, passage)  # lm.model is the wrapped model while the adapter lives
        return self._trained(base, stats, scored, pre)

    def evaluate_batch(self, lm: LoadedModel, items: list[tuple[Passage, str | None, int, dict]]) -> list[dict]:
        """`evaluate` for several (passage, self_edit, seed, pre) at once: one adapter each, all trained
        together in one adapter bank, and all their questions answered in shared generation batches."""
        cfg = self.config.inner_loop
        results: list[dict | None] = [None] * len(items)
        usable = []
        for i, (passage, self_edit, _seed, pre) in enumerate(items):
            base, data = self._prepare(passage, self_edit, pre)
            if data.problem:
                results[i] = self._unusable(passage, base, data.problem)
            else:
                usable.append((i, base, lm_examples(lm.tokenizer, data.sequences, cfg.max_seq_len)))
        if usable:
            seeds = [items[i][2] for i, _, _ in usable]
            with adapter_bank(lm, cfg, seeds) as bank:
                stats = train_bank(lm, bank, [examples for _, _, examples in usable], cfg, seeds=seeds,
                                   precision=self.precision(lm), max_tokens=cfg.tokens_per_forward)
                scored = self.score_many(lm, [items[i][0] for i, _, _ in usable], adapters=list(range(len(usable))))
            for (i, base, _), st, sc in zip(usable, stats, scored):
                results[i] = self._trained(base, st, sc, items[i][3])
        return results

    def _prepare(self, passage: Passage, self_edit: str | None, pre: dict):
        cfg = self.config.inner_loop
        data = training_set(passage, self_edit, split_lines=cfg.split_lines,
                            include_passage=cfg.include_passage, max_lines=cfg.max_lines)
        base = dict(passage_id=passage.id, n_sequences=len(data.sequences), n_lines=data.n_lines,
                    dropped=data.dropped, pre_reward=pre["reward"])
        return base, data

    def _unusable(self, passage: Passage, base: dict, problem: str) -> dict:
        # Counted as no answer to every question: zero on the accuracy metrics, no likelihood.
        n = len(self.questions(passage))
        grades = dict(em=[0.0] * n, f1=[0.0] * n, contains=[0.0] * n, loglik=[None] * n, judge=[None] * n)
        result = dict(base, valid=False, problem=problem, reward=0.0, gain=None, answers=[""] * n, grades=grades)
        if passage.watched:
            result["watched"] = dict(reward=0.0, means=None)
        return result

    @staticmethod
    def _trained(base: dict, stats, scored: dict, pre: dict) -> dict:
        gain = scored["reward"] - pre["reward"] if scored["reward"] is not None and pre["reward"] is not None else None
        return dict(base, valid=True, problem=None, train=stats.as_dict(), gain=gain, **scored)

    def precision(self, lm: LoadedModel) -> str:
        return resolve_precision(self.config.model.precision, lm.device)

    # --- answering and grading ----------------------------------------------------------------
    def questions(self, passage: Passage, watched: bool = False):
        """The questions a passage is scored on (`watched`: the ones asked beside them, unrewarded)."""
        limit = self.config.answer.max_questions
        asked = passage.watched if watched else passage.questions
        return asked[:limit] if limit else asked

    def score(self, lm: LoadedModel, passage: Passage, open_book: bool = False) -> dict:
        return self.score_many(lm, [passage], open_book=open_book)[0]

    def score_many(self, lm: LoadedModel, passages: list[Passage], adapters: list | None = None,
                   open_book: bool = False) -> list[dict]:
        """Answer and grade the questions of each passage, all in shared batches; with `adapters`,
        passage i's questions go through adapter adapters[i] of the installed adapter bank (or, when
        adapters[i] is a list, question j through adapter adapters[i][j]); with `open_book`, each
        question is asked with its passage in the prompt. A passage's `watched` questions are asked
        after its own and graded apart, as the result's `watched` (reward and means), never its reward."""
        cfg = self.config.answer
        precision = self.precision(lm)
        own = [self.questions(p) for p in passages]
        if adapters is not None and any(isinstance(a, list) and p.watched for a, p in zip(adapters, passages)):
            raise ValueError("watched questions with one adapter per question are not supported")
        seen = [self.questions(p, watched=True) for p in passages]
        questions = [tuple(q) + tuple(w) for q, w in zip(own, seen)]
        prompts = [format_prompt(lm, answer_prompt(cfg.prompt_style, p.title, q.question, p.context if open_book else None),
                                 chat=cfg.prompt_style == "chat")
                   for p, qs in zip(passages, questions) for q in qs]
        rows = None if adapters is None else [
            r for a, qs in zip(adapters, questions) for r in (a if isinstance(a, list) else [a] * len(qs))]
        # every distinct gold answer is scored, and each question keeps its best one (as EM and F1 do)
        golds = [list(dict.fromkeys(q.answers)) for qs in questions for q in qs]
        start = time.perf_counter()
        answers = generate(lm, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           stop_at_newline=cfg.prompt_style == "completion", precision=precision, adapter_rows=rows)
        flat = completion_logprobs(lm, [p for p, gs in zip(prompts, golds) for _ in gs], [g for gs in golds for g in gs],
                                   batch_size=cfg.batch_size, precision=precision,
                                   adapter_rows=None if rows is None else [r for r, gs in zip(rows, golds) for _ in gs])
        loglik, at = [], 0
        for gs in golds:
            loglik.append(max(flat[at:at + len(gs)]))
            at += len(gs)
        seconds = round((time.perf_counter() - start) / max(1, len(passages)), 2)  # each passage's share
        out, at = [], 0
        for qs, ws in zip(own, seen):
            mine = slice(at, at + len(qs))
            at += len(qs)
            out.append(self._grade(qs, answers[mine], loglik[mine], seconds))
            if ws:
                theirs = slice(at, at + len(ws))
                at += len(ws)
                graded = self._grade(ws, answers[theirs], loglik[theirs], seconds)
                out[-1]["watched"] = dict(reward=graded["reward"], means=graded["means"])
        return out

    def _grade(self, questions, answers, loglik: list[float], seconds: float) -> dict:
        grades = {
            "em": [exact_match(a.text, list(q.answers)) for a, q in zip(answers, questions)],
            "f1": [token_f1(a.text, list(q.answers)) for a, q in zip(answers, questions)],
            "contains": [contains_answer(a.text, list(q.answers)) for a, q in zip(answers, questions)],
            "loglik": loglik,
            "judge": [None] * len(questions),
        }
        judge_errors = []
        if self.judge is not None:
            for i, (a, q) in enumerate(zip(answers, questions)):
                grades["judge"][i], err = self.judge.grade(q.question, list(q.answers), a.text)
                if err:
                    judge_errors.append(err)
        means = {m: mean(v) for m, v in grades.items()}
        metric = self.config.reward.metric
        # loglik is rewarded as the geometric-mean per-token probability of the best gold answer
        # (exp of its mean per-token log-probability), averaged over questions: it lies in [0, 1] like
        # the other metrics, so that a malformed self-edit's reward of 0 is the worst possible.
        reward = mean(math.exp(v) for v in loglik) if metric == "loglik" else means[metric]
        return dict(answers=[a.text for a in answers], answers_hit_limit=[a.hit_limit for a in answers],
                    grades=grades, means=means, reward=reward, judge_errors=judge_errors, answer_seconds=seconds)
