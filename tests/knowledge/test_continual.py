"""Continual self-edits on the tiny model: the matrix bookkeeping, each remedy, resume, the summary."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import overrides
from seal.cli import app
from seal.core.config import LoraTrainConfig
from seal.core.continual import SequentialLora, kl_loss, kl_to_reference, orthogonal_penalty, project_out, replay_sample
from seal.core.runs import Run
from seal.core.training import Example, collate, train
from seal.knowledge.continual import draw_sequences, summary
from seal.knowledge.data import load_builtin
from seal.knowledge.retrieval import TfIdf

runner = CliRunner()
CFG = LoraTrainConfig(rank=4, alpha=8, epochs=2, batch_size=2, lr=1e-2)


def examples(tokenizer, texts):
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        out.append(Example(ids, list(ids)))
    return out


def run_continual(tiny_config, *extra):
    args = overrides(tiny_config) + ["--set", "data.eval_passages=4", "--set", "continual.steps=3",
                                     "--set", "continual.sequences=2", *extra]
    result = runner.invoke(app, ["knowledge", "continual", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = [p for p in Path(tiny_config.runs_dir).iterdir() if p.name.startswith("continual")]
    return run_dir, [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def test_replay_sample_draws_only_from_earlier_steps():
    earlier = [[f"s0-{i}" for i in range(3)], [f"s1-{i}" for i in range(2)]]  # steps 1 and 2; step 3 is in progress
    picks = replay_sample(earlier, 4, seed=7)
    assert len(picks) == 4 and len(set(picks)) == 4  # without replacement while they last
    assert all(0 <= s < 2 and 0 <= i < len(earlier[s]) for s, i in picks)
    assert replay_sample(earlier, 4, seed=7) == picks  # seeded
    assert len(replay_sample(earlier, 12, seed=1)) == 12  # more than there are: the pool again
    assert replay_sample([], 5, seed=0) == [] and replay_sample(earlier, 0, seed=0) == []


def test_kl_term_is_zero_for_an_unchanged_model_and_grows_with_training(tiny):
    data = examples(tiny.tokenizer, ["The Zorbian moon is purple.", "Tides on Zorb rise twice a day."])
    batch = collate(data, tiny.tokenizer.pad_token_id)
    for mode in ("merge", "stack"):
        with SequentialLora(tiny, CFG, mode) as seq:
            wrapped = seq.begin(seed=1)  # B = 0: the new adapter changes nothing yet
            assert kl_to_reference(wrapped, batch, seq.reference).item() == pytest.approx(0.0, abs=1e-6)
            train(wrapped, data, CFG, seed=1, pad_id=tiny.tokenizer.pad_token_id, device=tiny.device)
            assert kl_to_reference(wrapped, batch, seq.reference).item() > 1e-3
            term = kl_loss(wrapped, [data], 2, 0.5, seq.reference, 0, tiny.tokenizer.pad_token_id, tiny.device)
            value = term(0)
            assert value.requires_grad and value.item() > 0
            assert kl_loss(wrapped, [], 2, 1.0, seq.reference, 0, 0, tiny.device) is None  # nothing earlier


def test_kl_reference_is_the_model_before_this_step(tiny):
    """After one committed step, the reference is the once-updated model, not the starting one."""
    data = examples(tiny.tokenizer, ["alpha beta gamma delta epsilon"] * 2)
    x = torch.tensor([data[0].input_ids])
    start = tiny.model(x).logits
    for mode in ("merge", "stack"):
        with SequentialLora(tiny, CFG, mode) as seq:
            train(seq.begin(seed=1), data, CFG, seed=1, pad_id=0, device=tiny.device)
            seq.commit()
            after_one = tiny.model(x).logits
            assert not torch.allclose(after_one, start, atol=1e-4)
            wrapped = seq.begin(seed=2)
            train(wrapped, data, CFG, seed=2, pad_id=0, device=tiny.device)
            with torch.no_grad(), seq.reference():
                assert torch.allclose(wrapped(input_ids=x).logits, after_one, atol=1e-4)
            assert not torch.allclose(wrapped(input_ids=x).logits, after_one, atol=1e-4)
            assert seq.history and all(not p.requires_grad for n, p in wrapped.named_parameters() if ".step1." in n)
        assert torch.allclose(tiny.model(x).logits, start)  # the starting weights again


def test_merge_and_stack_give_the_same_model_and_saved_steps_reload(tiny, tmp_path):
    data = examples(tiny.tokenizer, ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa"])
    x = torch.tensor([data[0].input_ids])
    out = {}
    for mode in ("merge", "stack"):
        with SequentialLora(tiny, CFG, mode) as seq:
            for step in (1, 2):
                train(seq.begin(seed=step), data, CFG, seed=step, pad_id=0, device=tiny.device)
                seq.commit(tmp_path / mode / f"t{step}")
            out[mode] = tiny.model(x).logits.detach()
        with SequentialLora(tiny, CFG, mode) as seq:  # resume: re-apply the saved steps
            seq.load(tmp_path / mode / "t1")
            seq.load(tmp_path / mode / "t2")
            assert torch.allclose(tiny.model(x).logits, out[mode], atol=1e-5)
            assert len(seq.history) == 2
    assert torch.allclose(out["merge"], out["stack"], atol=1e-4)


def test_orthogonal_penalty(tiny):
    data = examples(tiny.tokenizer, ["alpha beta gamma delta"])
    with SequentialLora(tiny, CFG, "merge") as seq:
        wrapped = seq.begin(seed=1)
        assert orthogonal_penalty(wrapped, seq.current, []).item() == 0.0
        train(wrapped, data, CFG, seed=1, pad_id=0, device=tiny.device)
        seq.commit()
        wrapped = seq.begin(seed=2)
        name = seq.current
        penalty = orthogonal_penalty(wrapped, name, seq.history)
        by_hand = sum((m.lora_A[name].weight @ seq.history[0][n.removeprefix("base_model.model.")].T).pow(2).sum()
                      for n, m in wrapped.named_modules() if name in getattr(m, "lora_A", {}))
        assert penalty.item() == pytest.approx(by_hand.item()) and penalty.item() > 0
        # A new A orthogonal to every earlier one costs nothing (orthogonal_init projects it there)
        project_out(wrapped, name, seq.history)
        assert orthogonal_penalty(wrapped, name, seq.history).item() == pytest.approx(0.0, abs=1e-8)


def test_tfidf_routes_questions_to_their_passage():
    docs = ["Zorbian moon\nThe Zorbian moon glows purple at dusk.", "Kelp farming\nKelp grows fast in cold water."]
    index = TfIdf(docs)
    assert index.best("What colour does the Zorbian moon glow?") == 0
    assert index.best("Where does kelp grow fast?") == 1
    assert index.best("Where does kelp grow fast?", among=[0]) == 0


def test_draw_sequences(tiny_config):
    from seal.core.config import ConfigError
    from seal.knowledge.data import load_builtin

    pool = load_builtin()[:6]
    seqs = draw_sequences(pool, 4, 3, seed=0)
    assert [len(s) for s in seqs] == [4, 4, 4] and all(len({p.id for p in s}) == 4 for s in seqs)
    assert draw_sequences(pool, 4, 3, seed=0) == seqs and draw_sequences(pool, 4, 3, seed=1) != seqs
    assert draw_sequences(pool, 4, 2, seed=0) == seqs[:2]  # sequence s does not depend on S
    with pytest.raises(ConfigError, match=r"continual\.steps=7"):
        draw_sequences(pool, 7, 1, seed=0)


def test_continual_matrix_bookkeeping_remedies_and_resume(tiny_config):
    run_dir, records = run_continual(tiny_config, "--remedy", "none", "--remedy", "replay", "--remedy", "kl",
                                     "--remedy", "orthogonal", "--remedy", "route", "--set", "continual.orthogonal_init=true")
    plan = next(r for r in records if r["key"] == "continual/plan")["sequences"]
    assert len(plan) == 2 and all(len(s) == 3 for s in plan)
    steps = [r for r in records if r["kind"] == "continual_step"]
    assert len(steps) == 5 * 2 * 3
    passages = {p.id: p for p in load_builtin()}
    for r in steps:
        seq = plan[r["sequence"]]
        assert r["passage_id"] == seq[r["step"] - 1]
        # after step t: exactly the questions of passages 1..t, in order
        assert [s["passage_id"] for s in r["scores"]] == seq[:r["step"]]
        assert [s["position"] for s in r["scores"]] == list(range(1, r["step"] + 1))
        # every question of each passage seen so far, answer.max_questions=2 at most
        assert [len(s["answers"]) for s in r["scores"]] == [min(2, len(passages[p].questions)) for p in seq[:r["step"]]]
        if r["remedy"] == "replay":
            assert all(1 <= step < r["step"] for step, _ in r["replayed"])
            assert (len(r["replayed"]) > 0) == (r["step"] > 1 and r["valid"])
        if r["remedy"] == "kl" and r["valid"] and r["step"] > 1:
            assert r["train"]["extra_loss"] >= 0
        if r["remedy"] == "orthogonal" and r["valid"] and r["step"] > 1:
            assert 0 <= r["train"]["extra_loss"] < 1e-3  # started orthogonal; a few small steps keep it near 0
        if r["remedy"] == "route":  # routes[j]: the adapters passage j's questions went (len(seq): no adapter)
            routes = r["routes"]
            assert [len(x) for x in routes] == [len(s["answers"]) for s in r["scores"]]
            hits = sum(k == j for j, ks in enumerate(routes) for k in ks) / sum(map(len, routes))
            if all(k < len(seq) for ks in routes for k in ks):  # every seen passage has its adapter
                assert r["routing_accuracy"] == pytest.approx(hits)
            if r["step"] == 1:  # one passage seen: every question goes to it
                assert r["routing_accuracy"] == 1.0
    assert {r["context_id"] for r in records if r["key"].startswith("continual/start/")} == {p for s in plan for p in s}
    assert not any((run_dir / "continual").glob("*/s*/t*"))  # adapters removed once a sequence is complete

    summ = summary(Run.resume(run_dir))
    assert list(summ) == ["none", "replay", "kl", "orthogonal", "route"]
    s = summ["none"]
    mats = [[[None] * 3 for _ in range(3)] for _ in range(2)]
    for r in steps:
        if r["remedy"] == "none":
            for sc in r["scores"]:
                mats[r["sequence"]][r["step"] - 1][sc["position"] - 1] = sc["reward"]
    retention = [sum(m[2][:2]) / 2 for m in mats]
    plasticity = [sum(m[t][t] for t in range(3)) / 3 for m in mats]
    assert s["retention"][0] == pytest.approx(sum(retention) / 2)
    assert s["plasticity"][0] == pytest.approx(sum(plasticity) / 2)
    assert s["mean"][0][1] is None and s["mean"][2][0] == pytest.approx((mats[0][2][0] + mats[1][2][0]) / 2)
    assert "| none |" in (run_dir / "continual.md").read_text()

    # resume after losing the last two steps of a finished sequence: its adapters are gone, so step 1 is
    # redone too (test_continual_stack_mode... resumes with the adapters kept)
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    keep = [line for line in lines if '"continual/none/s1/t2"' not in line and '"continual/none/s1/t3"' not in line]
    (run_dir / "records.jsonl").write_text("\n".join(keep) + "\n")
    again = runner.invoke(app, ["knowledge", "continual", "--quiet", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    after = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(after) == len(keep) + 3
    assert [r["key"] for r in after[-3:]] == [f"continual/none/s1/t{t}" for t in (1, 2, 3)]


def test_continual_stack_mode_and_a_clear_error(tiny_config):
    run_dir, records = run_continual(tiny_config, "--set", "continual.mode=stack", "--set", "continual.keep_adapters=true")
    steps = [r for r in records if r["kind"] == "continual_step"]
    assert len(steps) == 6 and all(r["mode"] == "stack" for r in steps)
    assert any((run_dir / "continual" / "none" / "s0").glob("t*"))  # kept
    # resume with the adapters there: steps 1 and 2 are re-applied from disk, only step 3 is redone
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    keep = [line for line in lines if '"continual/none/s1/t3"' not in line]
    (run_dir / "records.jsonl").write_text("\n".join(keep) + "\n")
    again = runner.invoke(app, ["knowledge", "continual", "--quiet", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    after = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(after) == len(keep) + 1
    redone, original = after[-1], next(r for r in steps if r["key"] == "continual/none/s1/t3")
    assert redone["key"] == original["key"]
    assert [s["reward"] for s in redone["scores"]] == pytest.approx([s["reward"] for s in original["scores"]], abs=1e-5)
    bad = runner.invoke(app, ["knowledge", "continual", "--quiet", *overrides(tiny_config),
                              "--set", "continual.steps=9"])
    assert bad.exit_code == 2 and "continual.steps=9" in bad.output


def test_continual_rejects_an_unknown_remedy(tiny_config):
    bad = runner.invoke(app, ["knowledge", "continual", "--quiet", *overrides(tiny_config), "--remedy", "magic"])
    assert bad.exit_code == 2
    assert "continual.remedies" in bad.output and "magic" in bad.output
    assert not Path(tiny_config.runs_dir).exists() or not any(Path(tiny_config.runs_dir).iterdir())


def test_score_many_sends_each_question_through_its_own_adapter(tiny, tiny_config):
    from seal.core.multi_lora import adapter_bank, train_bank
    from seal.knowledge.data import load_builtin
    from seal.knowledge.domain import KnowledgeDomain

    domain = KnowledgeDomain(tiny_config)
    passages = load_builtin()[:2]
    n = [len(domain.questions(p)) for p in passages]
    cfg = tiny_config.inner_loop.model_copy(update=dict(lr=5e-2, epochs=3))
    data = examples(tiny.tokenizer, [passages[1].context])
    with adapter_bank(tiny, cfg, [1, 2]) as bank:
        train_bank(tiny, bank, [[], data], cfg, seeds=[1, 2])  # adapter 0 stays the starting model
        per_passage = domain.score_many(tiny, passages, adapters=[0, 1])
        per_question = domain.score_many(tiny, passages, adapters=[[0] * n[0], [1] * n[1]])
        swapped = domain.score_many(tiny, passages, adapters=[1, 0])
        mixed = domain.score_many(tiny, passages, adapters=[[1] * n[0], [0] * n[1]])
    loglik = lambda scores: [v for s in scores for v in s["grades"]["loglik"]]
    assert loglik(per_question) == pytest.approx(loglik(per_passage))
    assert loglik(mixed) == pytest.approx(loglik(swapped))
    assert per_passage[1]["grades"]["loglik"] != pytest.approx(swapped[1]["grades"]["loglik"])
