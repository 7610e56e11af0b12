"""The knowledge domain's parts of the inner loop: a self-edit as training items, and the score of a
model on a passage's questions.

`prepare` turns a self-edit into training items (each line after its key, and the passage);
core/inner_loop.py trains them with the configured objective (one adapter at a time, or many in one
adapter bank); `score_updated` answers each passage's questions without the passage through its
updated model, in shared batches, and grades them.
"""

from __future__ import annotations

import copy
import math
import time

from seal.core.config import with_changes
from seal.core.domain import Domain
from seal.core.endpoint import Judge
from seal.core.examples import Example
from seal.core.generation import completion_logprobs, format_prompt, generate
from seal.core.inner_loop import Update
from seal.core.models import LoadedModel
from seal.core.stats import mean
from seal.core.training import lm_examples
from seal.knowledge.config import KnowledgeConfig
from seal.knowledge.data import Passage
from seal.knowledge.grading import contains_answer, discrimination, distractors, exact_match, token_f1
from seal.knowledge.prompts import answer_prompt, load_template, self_edit_prompt
from seal.knowledge.self_edit import item_template, training_set

METRICS = ("em", "f1", "contains", "loglik", "judge", "discrimination")


class KnowledgeDomain(Domain):
    """Plugs the knowledge-incorporation task into the ReST-EM core."""

    name = "knowledge"
    batched = True
    context_alone = "passage"  # reward.baseline passage: each passage also trained alone

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

    def with_objective(self, objective: str) -> KnowledgeDomain:
        """The same domain training every update with another objective (inner_loop.objective)."""
        return self.with_inner_loop(objective=objective)

    def with_inner_loop(self, **fields) -> KnowledgeDomain:
        """The same domain with other inner-loop settings (e.g. passage_items; a section such as distill
        changed field by field), validated, for one table row."""
        other = copy.copy(self)
        inner = with_changes(self.config.inner_loop, fields, "inner_loop")
        other.config = self.config.model_copy(update=dict(inner_loop=inner))
        return other

    # --- the inner loop's parts (core/inner_loop.py trains) ---------------------------------------
    def prepare(self, lm: LoadedModel, passage: Passage, self_edit: str | None, seed: int, pre: dict) -> Update:
        """The self-edit's training items (None: the passage alone), each keyed by inner_loop.item_format;
        an unusable self-edit is a zero reward with the reason recorded."""
        cfg = self.config.inner_loop
        probing = cfg.self_edit_items == "probes" and self_edit is not None
        data = training_set(passage, self_edit, split_lines=cfg.split_lines, include_passage=cfg.include_passage,
                            max_lines=cfg.max_lines, item_format="{line}" if probing else cfg.item_format,
                            passage_items=cfg.passage_items)
        base = dict(passage_id=passage.id, n_sequences=len(data.sequences), n_lines=data.n_lines,
                    dropped=data.dropped, pre_reward=pre["reward"])
        if data.problem:
            return Update(self._unusable(passage, base, data.problem))
        if not probing:
            return Update(base, lm_examples(lm.tokenizer, data.sequences, cfg.max_seq_len))
        questions, rest = data.sequences[:data.n_lines], data.sequences[data.n_lines:]
        probes = self.probe_examples(lm, passage, questions)
        base["dropped"] = dict(base["dropped"], **({"no teacher answer": len(questions) - len(probes)}
                                                   if len(probes) < len(questions) else {}))
        if not probes:
            return Update(self._unusable(passage, base, "no probe has a teacher answer"))
        keyed = [item_template(cfg.item_format).format(title=passage.title, line=p) for p in rest]  # the passage
        return Update(base, probes + lm_examples(lm.tokenizer, keyed, cfg.max_seq_len))

    def probe_examples(self, lm: LoadedModel, passage: Passage, questions: list[str]) -> list:
        """Each question as the closed-book answer prompt followed by the teacher's answer (the model as it
        is, greedy, with the passage in its prompt), the loss on the answer tokens only; a question the
        teacher answers with nothing is dropped."""
        cfg = self.config.answer
        chat = cfg.prompt_style == "chat"
        open_book = [format_prompt(lm, answer_prompt(cfg.prompt_style, passage.title, q, passage.context), chat=chat)
                     for q in questions]
        answers = generate(lm, open_book, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           stop_at_newline=not chat, precision=self.precision(lm))
        out = []
        for q, a in zip(questions, answers):
            if not a.text.strip():
                continue
            prompt = lm.tokenizer(format_prompt(lm, answer_prompt(cfg.prompt_style, passage.title, q), chat=chat),
                                  add_special_tokens=False)["input_ids"]
            answer = lm.tokenizer(" " + a.text.strip(), add_special_tokens=False)["input_ids"]
            ids = (prompt + answer)[-self.config.inner_loop.max_seq_len:]
            out.append(Example(ids, [-100] * (len(ids) - len(answer)) + ids[len(ids) - len(answer):]))
        return out

    def score_updated(self, lm: LoadedModel, passages: list[Passage], adapters: list[int] | None) -> list[dict]:
        return self.score_many(lm, passages, adapters=adapters)

    def finish(self, record: dict, stats, scored: dict, pre: dict) -> dict:
        gain = scored["reward"] - pre["reward"] if scored["reward"] is not None and pre["reward"] is not None else None
        return dict(record, valid=True, problem=None, train=stats.as_dict(), gain=gain, **scored)

    def teacher_prefix(self, lm: LoadedModel, passage: Passage) -> list[int]:
        """The passage as the open-book answer prompt gives it; the training item follows."""
        text = self.config.inner_loop.distill_context.format(title=passage.title, passage=passage.context)
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _unusable(self, passage: Passage, base: dict, problem: str) -> dict:
        # Counted as no answer to every question: zero on the accuracy metrics, no likelihood.
        n = len(self.questions(passage))
        grades = dict(em=[0.0] * n, f1=[0.0] * n, contains=[0.0] * n, loglik=[None] * n, judge=[None] * n)
        if self.config.answer.distractors:
            grades["discrimination"] = [None] * n
        result = dict(base, valid=False, problem=problem, reward=0.0, gain=None, answers=[""] * n, grades=grades)
        if passage.watched:
            result["watched"] = dict(reward=0.0, means=None)
        return result


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
        # answer discrimination: the best gold answer against spans of the same passage that do not answer
        spans = [distractors(p.context, list(q.answers), [o.answers[0] for o in qs if o is not q and o.answers],
                             cfg.distractors) for p, qs in zip(passages, questions) for q in qs]
        versus = completion_logprobs(
            lm, [p for p, ds in zip(prompts, spans) for _ in ds], [d for ds in spans for d in ds],
            batch_size=cfg.batch_size, precision=precision,
            adapter_rows=None if rows is None else [r for r, ds in zip(rows, spans) for _ in ds]) if cfg.distractors else []
        discriminated, at = [], 0
        for best, ds in zip(loglik, spans):
            discriminated.append(discrimination(best, versus[at:at + len(ds)]))
            at += len(ds)
        seconds = round((time.perf_counter() - start) / max(1, len(passages)), 2)  # each passage's share
        out, at = [], 0
        for p, qs, ws in zip(passages, own, seen):
            mine = slice(at, at + len(qs))
            at += len(qs)
            out.append(self._grade(qs, answers[mine], loglik[mine], seconds, discriminated[mine], p.anchor))
            if ws:
                theirs = slice(at, at + len(ws))
                at += len(ws)
                graded = self._grade(ws, answers[theirs], loglik[theirs], seconds, discriminated[theirs])
                out[-1]["watched"] = dict(reward=graded["reward"], means=graded["means"])
        return out

    def _grade(self, questions, answers, loglik: list[float], seconds: float, discriminated: list,
               anchor: tuple[float, float] | None = None) -> dict:
        grades = {
            "em": [exact_match(a.text, list(q.answers)) for a, q in zip(answers, questions)],
            "f1": [token_f1(a.text, list(q.answers)) for a, q in zip(answers, questions)],
            "contains": [contains_answer(a.text, list(q.answers)) for a, q in zip(answers, questions)],
            "loglik": loglik,
            "judge": [None] * len(questions),
        }
        if self.config.answer.distractors:
            grades["discrimination"] = discriminated
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
        # teacher (label-free): the same on the open-book model's own answers, as the share of the way
        # from the closed-book to the open-book value of the passage (its `anchor`; none: unnormalised)
        if metric in ("loglik", "teacher"):
            reward = mean(math.exp(v) for v in loglik)
            if metric == "teacher" and anchor is not None and reward is not None:
                closed, opened = anchor
                reward = (reward - closed) / (opened - closed)
        else:
            reward = means[metric]
        return dict(answers=[a.text for a in answers], answers_hit_limit=[a.hit_limit for a in answers],
                    grades=grades, means=means, reward=reward, judge_errors=judge_errors, answer_seconds=seconds)
