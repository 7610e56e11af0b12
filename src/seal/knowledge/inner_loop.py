"""The knowledge domain's inner loop: score a model on a passage's questions, and evaluate a self-edit.

`evaluate_self_edit` trains a fresh LoRA on the self-edit's sequences, answers the passage's
questions without the passage, grades them, and removes the adapter again.
"""

from __future__ import annotations

import math
import time

from seal.config import Config
from seal.core.endpoint import Judge
from seal.core.generation import completion_logprobs, format_prompt, generate, resolve_precision
from seal.core.models import LoadedModel
from seal.core.training import fresh_adapter, lm_examples, train
from seal.knowledge.data import Passage
from seal.knowledge.grading import contains_answer, exact_match, token_f1
from seal.knowledge.prompts import answer_prompt, load_template, self_edit_prompt
from seal.knowledge.self_edit import training_set

METRICS = ("em", "f1", "contains", "loglik", "judge")


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


class KnowledgeDomain:
    """Plugs the knowledge-incorporation task into the ReST-EM core."""

    name = "knowledge"

    def __init__(self, config: Config, judge: Judge | None = None):
        self.config = config
        self.judge = judge
        self.template = load_template(config.self_edit.prompt)

    # --- what the core asks of a domain -------------------------------------------------------
    def context_id(self, passage: Passage) -> str:
        return passage.id

    def self_edit_prompt(self, passage: Passage) -> str:
        return self_edit_prompt(self.template, passage)

    def pre_update(self, lm: LoadedModel, passage: Passage) -> dict:
        return self.score(lm, passage)

    def evaluate(self, lm: LoadedModel, passage: Passage, self_edit: str | None, seed: int, pre: dict) -> dict:
        """Train a fresh adapter on the self-edit (None: the passage alone), then score. Never raises
        for bad model output: an unusable self-edit is a zero reward with the reason recorded."""
        cfg = self.config.inner_loop
        data = training_set(passage, self_edit, split_lines=cfg.split_lines,
                            include_passage=cfg.include_passage, max_lines=cfg.max_lines)
        base = dict(passage_id=passage.id, n_sequences=len(data.sequences), n_lines=data.n_lines,
                    dropped=data.dropped, pre_reward=pre["reward"])
        if data.problem:
            # Counted as no answer to every question: zero on the accuracy metrics, no likelihood.
            n = len(self.questions(passage))
            grades = dict(em=[0.0] * n, f1=[0.0] * n, contains=[0.0] * n, loglik=[None] * n, judge=[None] * n)
            return dict(base, valid=False, problem=data.problem, reward=0.0, gain=None,
                        answers=[""] * n, grades=grades)
        precision = resolve_precision(self.config.model.precision, lm.device)
        examples = lm_examples(lm.tokenizer, data.sequences, cfg.max_seq_len)
        with fresh_adapter(lm, cfg, seed) as wrapped:
            stats = train(wrapped, examples, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id,
                          device=lm.device, precision=precision)
            scored = self.score(lm, passage)  # lm.model is the wrapped model while the adapter lives
        gain = scored["reward"] - pre["reward"] if scored["reward"] is not None and pre["reward"] is not None else None
        return dict(base, valid=True, problem=None, train=stats.as_dict(), gain=gain, **scored)

    # --- answering and grading ----------------------------------------------------------------
    def questions(self, passage: Passage):
        limit = self.config.answer.max_questions
        return passage.questions[:limit] if limit else passage.questions

    def score(self, lm: LoadedModel, passage: Passage) -> dict:
        cfg = self.config.answer
        precision = resolve_precision(self.config.model.precision, lm.device)
        questions = self.questions(passage)
        prompts = [format_prompt(lm, answer_prompt(cfg.prompt_style, passage.title, q.question),
                                 chat=cfg.prompt_style == "chat") for q in questions]
        start = time.perf_counter()
        answers = generate(lm, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           stop_at_newline=cfg.prompt_style == "completion", precision=precision)
        loglik = completion_logprobs(lm, prompts, [q.answers[0] for q in questions],
                                     batch_size=cfg.batch_size, precision=precision)
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
        # loglik is rewarded as the mean per-token probability of the gold answer, which lies in [0, 1]
        # like the other metrics, so that a malformed self-edit's reward of 0 is the worst possible.
        reward = mean(math.exp(v) for v in loglik) if metric == "loglik" else means[metric]
        return dict(answers=[a.text for a in answers], answers_hit_limit=[a.hit_limit for a in answers],
                    grades=grades, means=means, reward=reward, judge_errors=judge_errors,
                    answer_seconds=round(time.perf_counter() - start, 2))
