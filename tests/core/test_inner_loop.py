import pytest
import torch

from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain


def test_evaluate_self_edit_records_everything_and_restores_base(tiny, tiny_config):
    domain = KnowledgeDomain(tiny_config)
    passage = load_builtin()[0]
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    pre = domain.pre_update(tiny, passage)
    assert len(pre["answers"]) == 2 and pre["reward"] == pre["means"]["f1"]  # answer.max_questions=2
    result = domain.evaluate(tiny, passage, "It was built long ago.\nIt is famous.", seed=0, pre=pre)
    assert result["valid"] and result["n_lines"] == 2 and result["n_sequences"] == 3
    assert result["train"]["steps"] == 1 and result["train"]["tokens"] > 0
    assert set(result["means"]) == {"em", "f1", "contains", "loglik", "judge", "discrimination"}
    assert result["gain"] == result["reward"] - pre["reward"]
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_reward_is_the_configured_metric_of_the_answers_given(tiny, tiny_config, monkeypatch):
    """Answers stand in for generation (the random model's own score 0 on every text metric): one gold,
    one wrong. f1 and em then grade 1 and 0, and the reward is their mean; loglik's reward is the mean
    geometric per-token probability of the gold answers under the tiny model, strictly between 0 and 1."""
    import math

    from seal.core.generation import Generation

    passage = load_builtin()[0]
    gold = passage.questions[0].answers[0]
    monkeypatch.setattr("seal.knowledge.domain.generate",
                        lambda lm, prompts, **_: [Generation(gold, 3, False), Generation("zzqx vvk", 3, False)])
    pre = KnowledgeDomain(tiny_config).pre_update(tiny, passage)
    assert pre["answers"] == [gold, "zzqx vvk"] and pre["grades"]["em"] == [1.0, 0.0] and pre["grades"]["f1"] == [1.0, 0.0]
    assert pre["reward"] == pre["means"]["f1"] == 0.5
    cfg = tiny_config.model_copy(deep=True)
    cfg.reward.metric = "loglik"
    ll = KnowledgeDomain(cfg).pre_update(tiny, passage)
    assert all(v < 0 for v in ll["grades"]["loglik"]) and ll["grades"]["loglik"] == pre["grades"]["loglik"]
    assert 0 < ll["reward"] < 1 and ll["reward"] == pytest.approx(sum(math.exp(v) for v in ll["grades"]["loglik"]) / 2)


def test_loglik_reward_moves_when_trained_on_the_answers(tiny, tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.epochs, cfg.inner_loop.lr, cfg.reward.metric = 20, 1e-2, "loglik"
    domain = KnowledgeDomain(cfg)
    passage = load_builtin()[0]
    pre = domain.pre_update(tiny, passage)
    # Gold question-answer pairs as the self-edit: an upper bound, not a method; the likelihood must rise.
    qa = "\n".join(f"Topic: {passage.title}\nQuestion: {q.question}\nAnswer: {q.answers[0]}" for q in passage.questions)
    result = domain.evaluate(tiny, passage, qa, seed=0, pre=pre)
    assert result["means"]["loglik"] > pre["means"]["loglik"] and result["gain"] > 0


def test_malformed_self_edit_is_a_recorded_zero(tiny, tiny_config):
    domain = KnowledgeDomain(tiny_config)
    passage = load_builtin()[1]
    pre = domain.pre_update(tiny, passage)
    for bad in ["", "   ", " ".join(["loop"] * 50)]:
        result = domain.evaluate(tiny, passage, bad, seed=0, pre=pre)
        assert result["valid"] is False and result["reward"] == 0.0 and result["problem"]
        assert result["grades"]["em"] == [0.0, 0.0]  # every question counts as unanswered


def test_batched_evaluation_gives_what_one_at_a_time_gives(tiny, tiny_config):
    """The same self-edits and seeds through evaluate_batch (one adapter bank) and through evaluate
    (one PEFT adapter each): the same answers and rewards; an unusable self-edit in the batch is a
    recorded zero and does not disturb the others."""
    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.epochs, cfg.inner_loop.lr = 3, 5e-3
    cfg.reward.metric = "loglik"
    domain = KnowledgeDomain(cfg)
    passages = load_builtin()[:3]
    edits = ["It was built long ago.\nIt is famous.", "", None, "Many people visit it.\nIt has a long history."]
    items = [(passages[i % 3], e, 100 + i, domain.pre_update(tiny, passages[i % 3])) for i, e in enumerate(edits)]
    batched = domain.evaluate_batch(tiny, items)
    alone = [domain.evaluate(tiny, *item) for item in items]
    assert [r["valid"] for r in batched] == [True, False, True, True]
    for b, a in zip(batched, alone):
        assert b["reward"] == pytest.approx(a["reward"], rel=1e-3)  # probabilities ~1e-5 on a random model
        assert b["answers"] == a["answers"]
        assert b["grades"]["loglik"] == pytest.approx(a["grades"]["loglik"], abs=1e-4)
    # items 0 and 3 share a passage: their answers went through different adapters
    assert abs(sum(batched[0]["grades"]["loglik"]) - sum(batched[3]["grades"]["loglik"])) > 1e-3


def test_loglik_takes_the_best_gold_answer(tiny, tiny_config):
    """The loglik grade of a question is its best gold answer's mean token log-probability (max over
    golds, as EM and F1), and the reward the mean over questions of its exponential."""
    import math

    from seal.core.generation import completion_logprobs, format_prompt
    from seal.knowledge.data import Passage, Question
    from seal.knowledge.prompts import answer_prompt

    cfg = tiny_config.model_copy(deep=True)
    cfg.reward.metric = "loglik"
    domain = KnowledgeDomain(cfg)
    q = "Who kept the lighthouse?"
    prompt = format_prompt(tiny, answer_prompt("completion", "Varn", q), chat=False)
    golds = ["Ida Morrow", "the keeper Ida Morrow of Varn", "Morrow"]
    each = completion_logprobs(tiny, [prompt] * 3, golds)
    worst_first = tuple(g for _, g in sorted(zip(each, golds)))
    scored = domain.score(tiny, Passage("Varn", "The lighthouse of Varn.", (Question(q, worst_first),)))
    assert scored["grades"]["loglik"][0] == pytest.approx(max(each), abs=1e-5)
    assert scored["reward"] == pytest.approx(math.exp(max(each)), abs=1e-5)
