"""The label-free reward (reward.metric teacher, knowledge/label_free.py) on the tiny model."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

import seal.knowledge.label_free as label_free_module
from seal.core.config import ConfigError, load_config
from seal.core.generation import completion_logprobs, format_prompt
from seal.core.progress import Progress
from seal.core.runs import Run
from seal.knowledge.data import DataError, Passage, load_builtin
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.label_free import teacher_probes
from seal.knowledge.learn import self_questioned
from seal.knowledge.prompts import answer_prompt


@pytest.fixture
def label_free(tiny_config, monkeypatch):
    # a random tiny model reads its context barely at all: any gap between the anchors will do here
    monkeypatch.setattr(label_free_module, "MIN_GAP", -1.0)
    cfg = tiny_config.model_copy(deep=True)
    cfg.reward.questions, cfg.reward.metric = "self", "teacher"
    cfg.questions.writer = "cloze"
    return cfg


def test_it_needs_self_written_questions(tiny_config):
    with pytest.raises(ConfigError, match=r"reward\.metric 'teacher' needs reward\.questions: self"):
        load_config(None, [f"model.name={tiny_config.model.name}", "reward.metric=teacher"])


def test_passages_without_gold_questions_get_the_teachers_answers_and_an_anchor(tiny, label_free):
    run = Run.create(label_free, "restem")
    passages = [Passage(p.title, p.context) for p in load_builtin()[:3]]  # no gold question at all
    probed = teacher_probes(run, tiny, self_questioned(run, tiny, passages, Progress(False)), Progress(False))
    assert probed
    for p in probed:
        record = run.get(f"teacher/{p.id}")
        written = {q["question"] for q in run.get(f"questions/{p.id}")["selection"]}
        assert {q.question for q in p.questions} <= written  # the probes are the selection questions
        assert [q.answers for q in p.questions] == [(r["answer"],) for r in record["probes"]]  # the teacher's answers
        assert p.anchor == (record["closed"], record["open"]) and record["open"] != record["closed"]
    n = len(run.records())
    again = teacher_probes(run, tiny, self_questioned(run, tiny, passages, Progress(False)), Progress(False))
    assert [p.anchor for p in again] == [p.anchor for p in probed] and len(run.records()) == n  # recorded once


def test_the_reward_is_the_share_of_the_gap_closed_by_hand(tiny, label_free):
    domain = KnowledgeDomain(label_free)
    passage = load_builtin()[0]
    run = Run.create(label_free, "restem")
    [probed] = teacher_probes(run, tiny, self_questioned(run, tiny, [passage], Progress(False)), Progress(False))
    questions = domain.questions(probed)
    prompts = [format_prompt(tiny, answer_prompt("completion", probed.title, q.question), chat=False) for q in questions]
    geo = sum(math.exp(v) for v in completion_logprobs(tiny, prompts, [q.answers[0] for q in questions])) / len(questions)
    closed, opened = probed.anchor
    assert geo == pytest.approx(closed, rel=1e-5)  # before any update the reward is 0 ...
    scored = domain.score(tiny, probed)
    gap = opened - closed
    assert scored["reward"] == pytest.approx((geo - closed) / gap, abs=1e-5 / abs(gap))
    assert scored["reward"] == pytest.approx(0.0, abs=1e-5 / abs(gap))
    assert domain.score(tiny, probed, open_book=True)["reward"] == pytest.approx(1.0, abs=1e-5 / abs(gap))  # and 1 open book
    # after an update: the same formula on the updated model
    result = domain.evaluate(tiny, probed, "The lighthouse keeper was Mara Quill.", seed=0, pre=dict(reward=0.0))
    assert result["valid"] and result["reward"] == pytest.approx(
        (sum(math.exp(v) for v in result["grades"]["loglik"]) / len(questions) - closed) / gap, abs=1e-5 / abs(gap))
    # a passage without an anchor (a held-out table's gold questions): the plain geometric-mean probability
    plain = domain.score(tiny, replace(probed, anchor=None))
    assert plain["reward"] == pytest.approx(closed, rel=1e-5)


def test_passages_without_a_teacher_signal_are_left_out(tiny, label_free, monkeypatch):
    monkeypatch.setattr(label_free_module, "MIN_GAP", math.inf)
    run = Run.create(label_free, "restem")
    passages = self_questioned(run, tiny, load_builtin()[:2], Progress(False))
    with pytest.raises(DataError, match="no training passage has a teacher signal"):
        teacher_probes(run, tiny, passages, Progress(False))


def test_rest_em_on_the_label_free_reward_with_distillation_watches_the_gold_one(label_free, monkeypatch):
    from typer.testing import CliRunner

    from helpers import overrides
    from seal.cli import app

    runner = CliRunner()
    args = [*overrides(label_free), "--set", "reward.questions=self", "--set", "reward.metric=teacher",
            "--set", "reward.watch_gold=true", "--set", "inner_loop.objective=distill", "--set", "restem.rounds=1"]
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(label_free.runs_dir).iterdir())
    run = Run.resume(run_dir)
    probes = run.records("teacher_probes")
    assert len(probes) == label_free.data.train_passages
    evals = [r for r in run.records() if r["key"].startswith("round1/eval/")]
    assert evals and all(r["objective"]["name"] == "distill" for r in evals)
    assert all("watched" in r for r in evals if r["valid"])  # the gold reward beside the label-free one
    noise = runner.invoke(app, ["knowledge", "noise", str(run_dir)])
    assert noise.exit_code == 0, noise.output
