import torch

from seal.knowledge.data import load_builtin
from seal.knowledge.inner_loop import KnowledgeDomain


def test_evaluate_self_edit_records_everything_and_restores_base(tiny, tiny_config):
    domain = KnowledgeDomain(tiny_config)
    passage = load_builtin()[0]
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    pre = domain.pre_update(tiny, passage)
    assert len(pre["answers"]) == 2 and 0.0 <= pre["reward"] <= 1.0  # answer.max_questions=2
    result = domain.evaluate(tiny, passage, "It was built long ago.\nIt is famous.", seed=0, pre=pre)
    assert result["valid"] and result["n_lines"] == 2 and result["n_sequences"] == 3
    assert result["train"]["steps"] == 1 and result["train"]["tokens"] > 0
    assert set(result["means"]) == {"em", "f1", "contains", "loglik", "judge"}
    assert result["gain"] == result["reward"] - pre["reward"]
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


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
