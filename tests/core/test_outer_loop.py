"""The outer loop's instruments: the passage baseline, RLOO, learning curves, reward noise, and a
multi-round run that resumes between rounds."""

import contextlib
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from test_restem import CountingDomain
from typer.testing import CliRunner

import seal
from helpers import overrides
from seal.cli import app
from seal.core.config import PolicySftConfig
from seal.core.curves import coverage, degenerate, distinct_2, learning_curve
from seal.core.examples import Example
from seal.core.models import load_model
from seal.core.noise import flip_share, noise_rows
from seal.core.objectives import make_objective
from seal.core.progress import Progress
from seal.core.restem import restem, rloo_weights, select
from seal.core.runs import Run
from seal.core.training import collate, objective_loss, reference_nll, sft_and_merge, target_nll
from seal.knowledge.data import load_builtin

runner = CliRunner()


def test_rloo_weights_sum_to_zero_and_equal_rewards_teach_nothing(tiny_config):
    w = rloo_weights([0.1, 0.4, 0.2, 0.3])
    assert sum(w) == pytest.approx(0.0, abs=1e-12)
    assert w[1] == pytest.approx(0.4 - (0.1 + 0.2 + 0.3) / 3)
    assert rloo_weights([0.2, 0.2, 0.2]) == [0.0, 0.0, 0.0] and rloo_weights([0.5]) == [0.0]
    cfg = tiny_config.model_copy(deep=True)
    cfg.restem.algorithm = "rloo"
    chosen = select([(0.1, 0), (0.4, 1), (0.2, 2), (0.3, 3)], None, cfg)
    assert [i for _, i, _ in chosen] == [0, 1, 2, 3] and sum(w for *_, w in chosen) == pytest.approx(0.0, abs=1e-12)
    assert select([(0.2, 0), (0.2, 1), (0.2, 2)], None, cfg) == []  # a context of equal rewards contributes nothing


def test_rest_em_keeps_the_best_only_when_it_beats_the_baseline(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.reward.require_improvement = True
    assert select([(0.1, 0), (0.3, 1)], 0.2, cfg) == [(0.3, 1, None)]
    assert select([(0.1, 0), (0.3, 1)], 0.3, cfg) == []  # equal is not better
    cfg.reward.require_improvement = False
    assert select([(0.1, 0), (0.3, 1)], 0.9, cfg) == [(0.3, 1, None)]


def test_diversity_options_select_on_coverage_and_drop_repetitive_self_edits(tiny_config):
    from seal.core.restem import diversity_scores

    source = "The lighthouse keeper Mara Quill rebuilt the northern lantern in 1903 after the storm."
    texts = ["Mara Quill rebuilt the northern lantern in 1903.", "The keeper rebuilt it.",
             "the lantern the lantern the lantern the lantern the lantern the lantern"]
    rewards = {0: 0.30, 1: 0.31, 2: 0.50}
    cfg = tiny_config.restem.model_copy()
    assert diversity_scores(rewards, texts, source, cfg) == rewards  # off: the reward alone
    cfg.coverage_bonus = 0.1
    scored = diversity_scores(rewards, texts, source, cfg)
    assert scored[0] == pytest.approx(0.30 + 0.1 * coverage([texts[0]], source))
    assert scored[0] > scored[1]  # the broader self-edit wins a near tie
    cfg.min_distinct_2 = 0.5
    assert distinct_2([texts[2]]) < 0.5 and 2 not in diversity_scores(rewards, texts, source, cfg)
    assert diversity_scores(rewards, texts, None, cfg).keys() == {0, 1}  # no source text: no bonus, the floor holds


def test_improvement_needs_a_baseline(tmp_path):
    from seal.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"require_improvement needs a reward\.baseline"):
        load_config(None, ["reward.require_improvement=true", "reward.baseline=none"])
    with pytest.raises(ConfigError, match=r"restem\.algorithm"):
        load_config(None, ["restem.algorithm=ppo"])
    with pytest.raises(ConfigError, match=r"restem\.rloo_clip"):
        load_config(None, ["restem.rloo_clip=1.5"])


def test_weighted_loss_is_linear_in_the_weights(tiny):
    tok, model = tiny.tokenizer, tiny.model
    ids = [tok("the lighthouse keeper", add_special_tokens=False)["input_ids"],
           tok("a tower of stone on the hill", add_special_tokens=False)["input_ids"]]
    examples = [Example(i, [-100] + i[1:]) for i in ids]
    batch = collate(examples, tok.pad_token_id)

    def loss(w):
        for e, x in zip(examples, w):
            e.weight = x
        return objective_loss(model, batch, examples, make_objective("weighted")).item()
    a, b = loss([2.0, 0.0]), loss([0.0, 2.0])  # (2 x its mean token loss) / 2 examples
    alone = model(**collate(examples[:1], tok.pad_token_id)).loss.item()
    assert a == pytest.approx(alone, rel=1e-5)  # the example's own mean token loss, padding or not
    assert loss([1.0, 1.0]) == pytest.approx((a + b) / 2, rel=1e-5)
    assert loss([-0.5, 0.25]) == pytest.approx((-0.5 * a + 0.25 * b) / 2, rel=1e-5)
    assert loss([0.0, 0.0]) == 0.0


def _two_examples(tok):
    ids = [tok("the lighthouse keeper", add_special_tokens=False)["input_ids"],
           tok("a tower of stone on the hill", add_special_tokens=False)["input_ids"]]
    return [Example(i, [-100] + i[1:]) for i in ids]


def test_clipped_loss_starts_with_the_weighted_losss_gradient_and_stops_past_the_clip(tiny):
    model, tok = tiny.model, tiny.tokenizer
    examples = _two_examples(tok)
    reference_nll(model, examples, tok.pad_token_id, tiny.device)
    batch = collate(examples, tok.pad_token_id)
    examples[0].weight, examples[1].weight = 0.7, -0.4
    assert sum(len(e.reference) for e in examples) == sum(len(e.labels) - 1 for e in examples)  # one per target token
    head = model.lm_head.weight
    head.requires_grad_(True)
    try:
        grads = []
        for loss in (objective_loss(model, batch, examples, make_objective("weighted")),
                     objective_loss(model, batch, examples, make_objective("clipped", clip=0.2))):
            head.grad = None
            loss.backward()
            grads.append(head.grad.clone())
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)  # r = 1: the same step
        # every token's probability already fell by more than the clip: the negative example teaches nothing
        head.grad = None
        examples[1].reference = [v - 0.5 for v in examples[1].reference]  # r = e^-0.5 < 0.8
        loss = objective_loss(model, collate(examples[1:], tok.pad_token_id), examples[1:],
                              make_objective("clipped", clip=0.2))
        loss.backward()
        assert loss.item() == pytest.approx(0.4 * 0.8)  # -min(r A, 0.8 A) with A = -0.4: the clipped value
        assert head.grad.abs().max().item() == 0.0
    finally:
        head.requires_grad_(False)
        head.grad = None


def test_a_clipped_rloo_update_lowers_a_negative_sample_less(tiny_dir):
    """Unclipped, a negative weight keeps lowering its sample's likelihood for as long as training
    runs (on the tiny model, until its final norm saturates the logits); clipped, each token stops
    giving gradient once its probability fell by the clip."""
    cfg = PolicySftConfig(rank=8, alpha=16, lr=1e-2, epochs=30, batch_size=1)
    rise = {}
    for clip in (None, 0.2):
        lm = load_model(str(tiny_dir), "cpu")
        [example] = _two_examples(lm.tokenizer)[1:]
        example.weight = -1.0
        before = _mean_nll(lm, example)
        objective = make_objective("clipped", clip=clip) if clip else make_objective("weighted")
        sft_and_merge(lm, [example], cfg, seed=0, precision="fp32", objective=objective)
        rise[clip] = _mean_nll(lm, example) - before
        assert (example.reference is not None) == (clip is not None)  # the sampling policy's NLLs, when clipped
    assert rise[None] > 0.3
    assert 0 < rise[0.2] < 0.7 * rise[None]


def _mean_nll(lm, example):
    batch = collate([example], lm.tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = lm.model.get_decoder()(input_ids=batch["input_ids"]).last_hidden_state[0, :-1]
        return target_nll(lm.model.get_output_embeddings(), hidden, batch["input_ids"][0, 1:]).mean().item()


def test_passage_baseline_once_per_context_and_repeat_and_survives_resume(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.eval_times, cfg.restem.evaluate_policy, cfg.reward.metric = 2, False, "loglik"
    cfg.inner_loop.adapters_per_batch = 2
    cfg.reward.require_improvement = False  # every context keeps its best self-edit: the check below always runs
    contexts = load_builtin()[:2]
    run = Run.create(cfg, "restem")

    class Passages(CountingDomain):  # counts trainings on the passage alone
        passage_calls = 0

        def evaluate_batch(self, lm, items):
            out = super().evaluate_batch(lm, items)
            Passages.passage_calls += sum(text is None for _, text, _, _ in items)
            return out

    with Progress(enabled=False) as progress, contextlib.suppress(KeyboardInterrupt):
        restem(run, load_model(cfg.model.name, "cpu"), Passages(cfg, fail_after=6), contexts, progress)
    with Progress(enabled=False) as progress:
        restem(Run.resume(run.path), load_model(cfg.model.name, "cpu"), Passages(cfg), contexts, progress)
    done = Run.resume(run.path)
    passage = [r for r in done.records("self_edit_eval") if "/passage/" in r["key"]]
    assert Passages.passage_calls == len(passage) == len(contexts) * 2  # once per (context, repeat), never redone
    assert sorted(r["key"] for r in passage) == sorted(f"round1/passage/{c.id}/{t}" for c in contexts for t in (0, 1))
    for r in passage:  # the passage alone trains with the seed its context's self-edits have in that repeat
        same_repeat = {e["seed"] for e in done.records("self_edit_eval")
                       if e.get("context_id") == r["context_id"] and e["repeat"] == r["repeat"]}
        assert same_repeat == {r["seed"]}
    kept = done.get("round1/done")["kept"]
    assert sorted(k["context_id"] for k in kept) == sorted(c.id for c in contexts)
    for k in kept:  # the baseline a kept self-edit was measured against: the mean of its passage's repeats
        mine = [r["reward"] for r in passage if r["context_id"] == k["context_id"]]
        assert len(mine) == 2 and k["baseline"] == pytest.approx(statistics.fmean(mine))


def test_two_round_rloo_run_resumes_after_a_kill_between_rounds(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.restem.rounds, cfg.restem.algorithm, cfg.reward.metric = 2, "rloo", "loglik"
    contexts = load_builtin()[:2]
    per_step = len(contexts) * (cfg.restem.k + 1)  # k self-edits and the passage alone per context
    run = Run.create(cfg, "restem")
    with Progress(enabled=False) as progress, contextlib.suppress(KeyboardInterrupt):
        restem(run, load_model(cfg.model.name, "cpu"), CountingDomain(cfg, fail_after=per_step), contexts, progress)
    first = Run.resume(run.path).get("round1/done")
    assert first is not None and Run.resume(run.path).get("round2/done") is None  # killed between rounds
    assert first["algorithm"] == "rloo"
    # every context's samples differ in reward on the tiny model, so each has non-zero RLOO weights
    assert {k["context_id"] for k in first["kept"]} == {c.id for c in contexts}
    for cid in {k["context_id"] for k in first["kept"]}:
        assert sum(k["weight"] for k in first["kept"] if k["context_id"] == cid) == pytest.approx(0.0, abs=1e-9)
    assert first["adapter"]  # round 1 trained and saved a policy adapter
    saved = (run.path / "policy/round-1/adapter_model.safetensors").stat().st_mtime_ns

    lm = load_model(cfg.model.name, "cpu")
    domain = CountingDomain(cfg)
    with Progress(enabled=False) as progress:
        restem(Run.resume(run.path), lm, domain, contexts, progress)
    assert domain.calls == 2 * per_step  # round 2's E-step and the last policy's: nothing of round 1 again
    resumed = Run.resume(run.path)
    assert resumed.get("round1/done") == first
    assert (run.path / "policy/round-1/adapter_model.safetensors").stat().st_mtime_ns == saved  # not trained again

    fresh = Run.create(cfg, "restem")
    lm2 = load_model(cfg.model.name, "cpu")
    with Progress(enabled=False) as progress:
        restem(fresh, lm2, CountingDomain(cfg), contexts, progress)
    assert [r["weight"] for r in fresh.get("round2/done")["kept"]] == \
        pytest.approx([r["weight"] for r in resumed.get("round2/done")["kept"]])
    s1, s2 = lm.model.state_dict(), lm2.model.state_dict()
    assert all(torch.allclose(s1[k], s2[k], atol=1e-6) for k in s1)
    curve = learning_curve(resumed)
    assert [r["round"] for r in curve.rows] == [0, 1, 2]


def test_text_statistics_of_self_edits():
    assert degenerate("too short") and degenerate("a fine sentence with words", valid=False)
    assert degenerate(" ".join(["the tower is tall"] * 8))
    assert not degenerate("The tower was built in 1850 by the town's fishermen after a storm.")
    assert distinct_2(["a b c", "a b c"]) == pytest.approx(2 / 4)
    assert distinct_2(["a b c", "d e f"]) == 1.0 and distinct_2(["a"]) is None
    assert coverage(["The keeper lit the lamp"], "keeper lamp stone tower of a") == pytest.approx(2 / 4)


def fake_run(tiny_config, common=True):
    """A restem run written by hand: two contexts, k = 2, two repeats, two E-steps."""
    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.eval_times, cfg.inner_loop.common_seeds = 2, common
    run = Run.create(cfg, "restem")
    rewards = {1: {"a": [[0.3, 0.1], [0.2, 0.25]], "b": [[0.5, 0.5], [0.1, 0.3]]},
               2: {"a": [[0.4, 0.3], [0.3, 0.5]], "b": [[0.6, 0.4], [0.2, 0.2]]}}
    for r, ctxs in rewards.items():
        for cid, matrix in ctxs.items():
            run.append("samples", f"round{r}/samples/{cid}", round=r, context_id=cid, prompt="p",
                       self_edits=["one two three four five six", "x"], n_tokens=[6, 1])
            run.append("pre_update", f"round{r}/pre/{cid}", round=r, context_id=cid, reward=0.05)
            for t in range(2):
                run.append("self_edit_eval", f"round{r}/passage/{cid}/{t}", round=r, context_id=cid, repeat=t, baseline="passage",
                           reward=0.2, self_edit=None)
                for i, row in enumerate(matrix):
                    run.append("self_edit_eval", f"round{r}/eval/{cid}/{i}/{t}", round=r, context_id=cid, sample=i,
                               repeat=t, reward=row[t], self_edit="x")
    return run, rewards


def test_learning_curve_and_noise_equal_a_hand_computation(tiny_config):
    run, rewards = fake_run(tiny_config)
    rows = learning_curve(run, {"a": "one two three four", "b": "seven"}).rows
    assert [r["round"] for r in rows] == [0, 1] and rows[0]["policy"] == "base model"
    means = {r: {c: [statistics.fmean(x) for x in m] for c, m in ctx.items()} for r, ctx in rewards.items()}
    flat = [x for v in means[1].values() for x in v]
    assert rows[0]["mean"] == pytest.approx(statistics.fmean(flat))
    assert rows[0]["median"] == pytest.approx(statistics.median(flat))
    assert rows[0]["best"] == pytest.approx(statistics.fmean(max(v) for v in means[1].values()))
    assert rows[0]["alone"] == pytest.approx(0.2) and rows[0]["pre"] == pytest.approx(0.05)
    assert rows[0]["beat"] == pytest.approx(sum(x > 0.2 for x in flat) / len(flat))
    assert rows[0]["tokens"] == pytest.approx(3.5) and rows[0]["degenerate"] == pytest.approx(0.5)
    assert rows[0]["coverage"] == pytest.approx((1 + 0) / 2)  # a: "three", "four" said; b: "seven" not
    diff = [statistics.fmean(means[2][c]) - statistics.fmean(means[1][c]) for c in "ab"]
    assert rows[1]["vs previous"][0] == pytest.approx(statistics.fmean(diff))
    # the self-edits against the passage alone (0.2 in every repeat), paired by context
    for row, r in zip(rows, (1, 2)):
        assert row["vs alone"][0] == pytest.approx(statistics.fmean(statistics.fmean(means[r][c]) - 0.2 for c in "ab"))
    assert rows[0]["vs base"] is None and rows[1]["vs base"] is None  # round 1's "vs base" is its "vs previous"
    # a third E-step: against the base model, not against round 1
    three = {"a": [[0.1, 0.1], [0.1, 0.2]], "b": [[0.9, 0.7], [0.3, 0.3]]}
    for cid, matrix in three.items():
        run.append("samples", f"round3/samples/{cid}", round=3, context_id=cid, prompt="p", self_edits=["x y", "z"], n_tokens=[2, 1])
        for t in range(2):
            for i, row in enumerate(matrix):
                run.append("self_edit_eval", f"round3/eval/{cid}/{i}/{t}", round=3, context_id=cid, sample=i, repeat=t,
                           reward=row[t], self_edit="x")
    third = learning_curve(run).rows[2]
    base = {c: statistics.fmean(means[1][c]) for c in "ab"}
    now = {c: statistics.fmean(statistics.fmean(x) for x in three[c]) for c in "ab"}
    assert third["vs base"][0] == pytest.approx(statistics.fmean(now[c] - base[c] for c in "ab"))
    assert third["vs base"][0] != pytest.approx(third["vs previous"][0]) and third["vs alone"] is None

    first, *_ = noise_rows(run, draws=4000)  # and the two later E-steps
    a, b = np.array(rewards[1]["a"]), np.array(rewards[1]["b"])
    repeat_var = statistics.fmean([statistics.variance(x) for m in (a, b) for x in m])
    # the spread of the means, less the repeat noise a mean of 2 repeats still carries
    between_var = statistics.fmean([statistics.variance(m.mean(axis=1))
                                    - statistics.fmean(statistics.variance(x) for x in m) / 2 for m in (a, b)])
    assert first["repeat std"] == pytest.approx(math.sqrt(repeat_var))
    assert first["between std"] == pytest.approx(math.sqrt(max(0.0, between_var)))
    pair_var = statistics.fmean([statistics.variance(m[0] - m[1]) for m in (a, b)])  # k = 2: one pair each
    assert first["pair std"] == pytest.approx(math.sqrt(pair_var))
    assert first["common seeds"] == "yes" and first["repeats"] == 2 and first["contexts"] == 2
    # context a: best is row 1 (0.225 > 0.2); redrawing both repeats as repeat 0 flips it (1 of 4 draws);
    # context b: row 0 wins in every draw
    assert first["flips"] == pytest.approx((0.25 + 0.0) / 2, abs=0.02)
    rng = np.random.default_rng(0)
    assert flip_share(b, 1000, rng) == 0.0


def test_the_noise_table_recovers_known_variance_components(tiny_config):
    """Simulated: each self-edit is worth a draw of std 0.05, each training adds noise of std 0.10; with
    4 repeats the spread of the means alone would read sqrt(0.05² + 0.10²/4) = 0.071, not 0.05."""
    rng = np.random.default_rng(0)
    run = Run.create(tiny_config, "restem")
    for c in range(300):
        worth = rng.normal(0.3, 0.05, 4)
        for i in range(4):
            for t in range(4):
                run.append("self_edit_eval", f"round1/eval/c{c}/{i}/{t}", round=1, context_id=f"c{c}", sample=i,
                           repeat=t, reward=float(worth[i] + rng.normal(0, 0.10)), self_edit="x")
    [row] = noise_rows(run, draws=10)
    assert row["repeat std"] == pytest.approx(0.10, rel=0.05)
    assert row["between std"] == pytest.approx(0.05, rel=0.15)


def test_curve_and_noise_commands_and_report(tiny_config):
    run, _ = fake_run(tiny_config, common=False)
    result = runner.invoke(app, ["knowledge", "curve", str(run.path)])
    assert result.exit_code == 0, result.output
    assert "base model" in result.output and (run.path / "curve.md").is_file() and (run.path / "curve.csv").is_file()
    result = runner.invoke(app, ["knowledge", "noise", str(run.path), "--draws", "200"])
    assert result.exit_code == 0 and "SEAL paper (7B)" in result.output and "| no |" in result.output
    result = runner.invoke(app, ["report", str(run.path)])
    assert result.exit_code == 0, result.output
    md = (run.path / "report" / "report.md").read_text()
    assert "Learning curve" in md and "Reward noise" in md and (run.path / "report" / "curve.png").stat().st_size > 5000


def test_rloo_reuses_the_first_round_of_a_rest_em_run(tiny_config):
    args = overrides(tiny_config)
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args,
                               "--set", "restem.evaluate_policy=false"]).exit_code == 0
    [source] = list(Path(tiny_config.runs_dir).iterdir())
    before = set(source.parent.iterdir())
    bad = runner.invoke(app, ["knowledge", "restem", "--quiet", *args, "--set", "self_edit.top_p=0.5",
                              "--reuse-round1", str(source)])
    assert bad.exit_code == 2 and "self_edit.top_p" in bad.output and set(source.parent.iterdir()) == before
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args, "--set", "restem.algorithm=rloo",
                                 "--set", "restem.evaluate_policy=false", "--set", "restem.min_distinct_2=0.3",
                                 "--reuse-round1", str(source)])  # the M-step's settings only: round 1 taken whole
    assert result.exit_code == 0, result.output
    [rloo] = set(source.parent.iterdir()) - before
    theirs, mine = Run.resume(source), Run.resume(rloo)
    round1 = [r for r in theirs.records() if r["key"].startswith("round1/") and r["key"] != "round1/done"]
    assert all(mine.get(r["key"])["reused_from"] == str(source) for r in round1)
    assert [mine.get(r["key"]).get("reward") for r in round1] == [r.get("reward") for r in round1]
    assert mine.get("round1/done")["algorithm"] == "rloo" and theirs.get("round1/done")["algorithm"] == "rest-em"
    # a resume copies again what a kill cut short, from the run the command started with
    records = rloo / "records.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"reused_from"' in line)
    records.write_text("".join(lines[:cut] + lines[cut + 1:]))
    other = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", "--resume", str(rloo), "--reuse-round1", str(rloo)])
    assert other.exit_code == 2 and "it started with --reuse-round1" in " ".join(other.output.split()), other.output
    again = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", "--resume", str(rloo)])
    assert again.exit_code == 0 and "round 1: 1 records taken" in again.output, again.output
    def content(run):
        return {r["key"]: {k: v for k, v in r.items() if k != "time"} for r in run.records()}

    assert content(Run.resume(rloo)) == content(mine)
    # one table with both policies' rounds; the second starts again from the base model
    evaluate = ["knowledge", "evaluate", "--quiet", *args, "--set", "eval.base_self_edits=false"]
    both = runner.invoke(app, [*evaluate, "--policy", str(source), "--policy", str(rloo)])
    assert both.exit_code == 0, both.output
    alone = runner.invoke(app, [*evaluate, "--policy", str(rloo)])
    assert alone.exit_code == 0, alone.output
    both_dir, alone_dir = sorted(p for p in source.parent.iterdir() if p.name.startswith("evaluate"))
    rows = {r["condition"]: r for r in seal.table(Run.resume(both_dir)).rows}
    assert {"passage + SEAL round 1 (rest-em) self-edits", "passage + SEAL round 1 (rloo) self-edits"} <= set(rows)
    single = {r["condition"]: r for r in seal.table(Run.resume(alone_dir)).rows}
    assert rows["SEAL round 1 (rloo), no update"]["reward"] == pytest.approx(single["SEAL round 1, no update"]["reward"])
    assert rows["SEAL round 1 (rloo), no update"]["policy"] == "rloo"


def test_evaluate_resumes_with_the_policies_it_started_with(tiny_config):
    args = overrides(tiny_config)
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args,
                               "--set", "restem.evaluate_policy=false"]).exit_code == 0
    [policy] = list(Path(tiny_config.runs_dir).iterdir())
    evaluate = ["knowledge", "evaluate", "--quiet", *args, "--set", "eval.base_self_edits=false"]
    assert runner.invoke(app, [*evaluate, "--policy", str(policy)]).exit_code == 0
    [run_dir] = [p for p in policy.parent.iterdir() if p.name.startswith("evaluate")]
    full = {r["condition"]: r["reward"] for r in seal.table(Run.resume(run_dir)).rows}
    assert any("SEAL round 1" in row for row in full)
    records = run_dir / "records.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(line for line in lines if "SEAL" not in line))  # killed before the policy's rows
    other = runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(run_dir), "--policy", str(run_dir)])
    assert other.exit_code == 2 and "it started with --policy" in " ".join(other.output.split()), other.output
    resumed = runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert {r["condition"]: r["reward"] for r in seal.table(Run.resume(run_dir)).rows} == pytest.approx(full)
    # a run directory from before meta.json kept its inputs: its command line says what they were
    meta = json.loads((run_dir / "meta.json").read_text())
    del meta["inputs"]
    meta["argv"] = ["seal", "knowledge", "evaluate", "--policy", str(policy)]
    (run_dir / "meta.json").write_text(json.dumps(meta))
    records.write_text("".join(line for line in lines if "SEAL" not in line))
    assert runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(run_dir)]).exit_code == 0
    assert {r["condition"]: r["reward"] for r in seal.table(Run.resume(run_dir)).rows} == pytest.approx(full)


def test_an_evaluation_resumed_with_more_policies_adds_their_rows_and_redoes_nothing(tiny_config):
    args = overrides(tiny_config)
    restem_args = ["knowledge", "restem", "--quiet", "--no-eval", *args, "--set", "restem.evaluate_policy=false"]
    assert runner.invoke(app, restem_args).exit_code == 0
    assert runner.invoke(app, [*restem_args, "--set", "restem.algorithm=rloo"]).exit_code == 0
    assert runner.invoke(app, [*restem_args, "--set", "restem.sft.lr=1e-3"]).exit_code == 0
    first, rloo, third = sorted(Path(tiny_config.runs_dir).iterdir())
    evaluate = ["knowledge", "evaluate", "--quiet", *args, "--set", "eval.base_self_edits=false"]
    assert runner.invoke(app, [*evaluate, "--policy", str(first)]).exit_code == 0
    [alone] = [p for p in first.parent.iterdir() if p.name.startswith("evaluate")]
    # one policy's rows have no label; with a second they would be renamed, so that is refused
    renamed = runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(alone),
                                  "--policy", str(first), "--policy", str(third)])
    assert renamed.exit_code == 2 and "renamed" in renamed.output, renamed.output
    assert runner.invoke(app, [*evaluate, "--policy", str(first), "--policy", str(third)]).exit_code == 0
    [two] = [p for p in first.parent.iterdir() if p.name.startswith("evaluate") and p != alone]
    had = {r["key"]: r for r in Run.resume(two).records()}
    out_of_order = runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(two),
                                       "--policy", str(third), "--policy", str(first), "--policy", str(rloo)])
    assert out_of_order.exit_code == 2 and "it started with --policy" in " ".join(out_of_order.output.split())
    more = runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(two),
                               "--policy", str(first), "--policy", str(third), "--policy", str(rloo)])
    assert more.exit_code == 0, more.output
    run = Run.resume(two)
    assert all(run.get(key) == record for key, record in had.items())  # nothing redone
    assert json.loads((two / "meta.json").read_text())["inputs"]["policy"] == [str(first), str(third), str(rloo)]
    [change] = run.records("inputs_change")
    assert change["policy"] == [[str(first), str(third)], [str(first), str(third), str(rloo)]]
    rows = {r["condition"]: r["reward"] for r in seal.table(run).rows}
    # two rest-em runs, each named by its directory; the rloo run by its algorithm
    assert {f"passage + SEAL round 1 ({name}) self-edits" for name in (first.name, third.name, "rloo")} <= set(rows)
    # the same as an evaluation started with all three
    assert runner.invoke(app, [*evaluate, "--policy", str(first), "--policy", str(third), "--policy", str(rloo)]).exit_code == 0
    [fresh] = [p for p in first.parent.iterdir() if p.name.startswith("evaluate") and p not in (alone, two)]
    assert {r["condition"]: r["reward"] for r in seal.table(Run.resume(fresh)).rows} == pytest.approx(rows)
    # and a later resume without --policy takes all three
    assert runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(two)]).exit_code == 0
    assert len(Run.resume(two).records()) == len(run.records())


def test_a_restem_run_resumed_with_more_rounds_goes_on_from_its_last(tiny_config):
    args = overrides(tiny_config)
    restem_args = ["knowledge", "restem", "--quiet", "--no-eval", *args, "--set", "reward.metric=loglik"]
    assert runner.invoke(app, [*restem_args, "--set", "restem.rounds=1"]).exit_code == 0  # with the last policy's E-step
    [short] = list(Path(tiny_config.runs_dir).iterdir())
    had = {r["key"]: r for r in Run.resume(short).records()}
    assert any(key.startswith("round2/") for key in had) and "round2/done" not in had
    more = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(short), "--set", "restem.rounds=2"])
    assert more.exit_code == 0, more.output
    run = Run.resume(short)
    assert run.config.restem.rounds == 2 and run.get("round2/done") is not None
    assert all(run.get(key) == record for key, record in had.items())  # round 1 and its policy's E-step kept
    fewer = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(short), "--set", "restem.rounds=1"])
    assert fewer.exit_code == 2 and "fewer than the run's 2" in " ".join(fewer.output.split()), fewer.output
    # the same as a run started with two rounds
    assert runner.invoke(app, [*restem_args, "--set", "restem.rounds=2"]).exit_code == 0
    [fresh] = [p for p in short.parent.iterdir() if p != short]
    kept = lambda r: {k["context_id"]: (k["self_edit"], k["reward"]) for k in r.get("round2/done")["kept"]}
    assert kept(Run.resume(fresh)).keys() == kept(run).keys() and kept(run)
    for cid, (text, reward) in kept(run).items():
        assert kept(Run.resume(fresh))[cid][0] == text and kept(Run.resume(fresh))[cid][1] == pytest.approx(reward)


def test_a_policy_trained_on_the_passage_alone_is_a_row_of_its_round(tiny_config):
    args = overrides(tiny_config)
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args,
                               "--set", "restem.evaluate_policy=false"]).exit_code == 0
    [policy] = list(Path(tiny_config.runs_dir).iterdir())
    result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *args, "--set", "eval.policy_passage_only=true",
                                 "--set", "reward.metric=loglik", "--policy", str(policy)])  # loglik: rewards above 0
    assert result.exit_code == 0, result.output
    [run_dir] = [p for p in policy.parent.iterdir() if p.name.startswith("evaluate")]
    run = Run.resume(run_dir)
    rows = {r["condition"]: r for r in seal.table(run).rows}
    row = rows["SEAL round 1, passage only"]
    assert (row["kind"], row["round"]) == ("passage", 1)
    # what the policy's self-edits add over the policy trained on the passage alone, paired by passage
    own = rows["passage + SEAL round 1 self-edits"]["vs own passage only"]
    assert own[0] == pytest.approx(rows["passage + SEAL round 1 self-edits"]["reward"] - row["reward"])
    assert own != rows["passage + SEAL round 1 self-edits"]["vs passage only"]
    assert rows["passage + base self-edits"]["vs own passage only"] == rows["passage + base self-edits"]["vs passage only"]
    assert row["vs own passage only"] is None and rows["passage only"]["vs own passage only"] is None
    assert not any(r["key"].startswith("eval/samples/SEAL round 1, passage only") for r in run.records())
    trained = [r for r in run.records() if r["key"].startswith("eval/eval/SEAL round 1, passage only/")]
    assert trained and all(r["self_edit"] is None and r["n_sequences"] == 1 for r in trained)
    for r in trained:  # the policy's own pre-update score, the seed of its self-edit row, the policy's weights
        pid = r["context_id"]
        assert r["pre_reward"] == run.get(f"eval/pre/SEAL round 1, no update/{pid}")["reward"]
        assert r["seed"] == run.get(f"eval/eval/passage + SEAL round 1 self-edits/{pid}/0")["seed"]
        base = run.get(f"eval/eval/passage only/{pid}/0")
        assert base["seed"] == r["seed"] and base["means"]["loglik"] != r["means"]["loglik"]


def test_another_inner_loop_reuses_the_samples_only(tiny_config):
    args = overrides(tiny_config)
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args, "--set", "restem.rounds=0",
                               "--set", "inner_loop.eval_times=2"]).exit_code == 0
    [source] = list(Path(tiny_config.runs_dir).iterdir())
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args, "--set", "restem.rounds=0",
                                 "--set", "inner_loop.eval_times=2", "--set", "inner_loop.common_seeds=false",
                                 "--reuse-round1", str(source)])
    assert result.exit_code == 0, result.output
    [other] = set(Path(tiny_config.runs_dir).iterdir()) - {source}
    theirs, mine = Run.resume(source), Run.resume(other)
    samples = [k for k in (r["key"] for r in theirs.records()) if k.startswith("round1/samples/")]
    assert samples and all(mine.get(k)["self_edits"] == theirs.get(k)["self_edits"] for k in samples)
    evals = [r for r in mine.records("self_edit_eval")]
    assert evals and not any("reused_from" in r for r in evals)  # evaluated again, with a seed per self-edit
    assert {r["seed"] for r in evals} != {r["seed"] for r in theirs.records("self_edit_eval")}
    rows = noise_rows(theirs) + noise_rows(mine)
    assert [r["common seeds"] for r in rows] == ["yes", "no"]
    bad = runner.invoke(app, ["knowledge", "restem", "--quiet", *args, "--set", "self_edit.temperature=0.5",
                              "--reuse-round1", str(source)])
    assert bad.exit_code == 2 and "self_edit.temperature" in bad.output


def test_resume_may_change_scheduling_only(tiny_config):
    args = overrides(tiny_config)
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args, "--set", "restem.rounds=0"]).exit_code == 0
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    refused = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(run_dir), "--set", "inner_loop.lr=0.1"])
    assert refused.exit_code == 2 and "inner_loop.lr" in refused.output
    ok = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", "--resume", str(run_dir),
                             "--set", "inner_loop.max_batch_seconds=300"])
    assert ok.exit_code == 0, ok.output
    run = Run.resume(run_dir)
    assert run.config.inner_loop.max_batch_seconds == 300
    [change] = run.records("config_change")
    assert change["changes"] == {"inner_loop.max_batch_seconds": [120.0, 300.0]}


@pytest.mark.parametrize("native", [True, False])
def test_a_run_keeps_the_precision_auto_chose_where_it_started(tiny_config, monkeypatch, native):
    """`model.precision: auto` means bf16 autocast on a CPU with bf16 instructions and fp32 on one without:
    a run saves what it meant where the run started, and a resume on another CPU keeps it."""
    import seal.core.generation
    import seal.core.models

    cpu = lambda has: [monkeypatch.setattr(m, "native_bf16_cpu", lambda: has) for m in (seal.core.generation, seal.core.models)]
    cpu(native)
    args = [*overrides(tiny_config), "--set", "model.precision=auto", "--set", "restem.rounds=0"]
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args]).exit_code == 0
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    run = Run.resume(run_dir)
    assert run.config.model.precision == ("bf16" if native else "fp32")
    assert run.meta["inputs"]["pinned"] == {"model.precision": "auto"}
    cpu(not native)  # the same run resumed on the other kind of CPU
    again = runner.invoke(app, ["knowledge", "restem", "--no-eval", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert Run.resume(run_dir).config.model.precision == ("bf16" if native else "fp32")
    assert ("without bf16 instructions" in again.output) == native  # bf16 kept where it is slow: said so


def test_watched_reward_table_equals_a_hand_computation(tiny_config):
    """One context, three self-edits, two repeats; each choice is scored on the repeat it was not made on."""
    from seal.core.noise import watched_rows

    run = Run.create(tiny_config.model_copy(deep=True), "restem")
    reward = [[0.1, 0.3], [0.2, 0.5], [0.4, 0.0]]
    watched = [[0.5, 0.1], [0.2, 0.6], [0.3, 0.3]]
    for i in range(3):
        for t in range(2):
            run.append("self_edit_eval", f"round1/eval/a/{i}/{t}", round=1, context_id="a", sample=i, repeat=t,
                       reward=reward[i][t], watched={"reward": watched[i][t], "means": None}, self_edit="x")
    [row] = watched_rows(run)
    assert row["contexts"] == 1 and row["self-edits"] == 3 and row["chance"] == pytest.approx(1 / 3)
    assert row["rank corr"] == pytest.approx(1.0) and row["same best"] == 1.0  # means 0.2/0.35/0.2 and 0.3/0.4/0.3
    # repeat 0 held out: repeat 1 picks self-edit 1 by both rewards (0.2); repeat 1 held out: repeat 0 picks
    # self-edit 2 by the reward (0.3) and self-edit 0 by the watched reward (0.1)
    assert row["by reward"] == pytest.approx(0.25) and row["by watched"] == pytest.approx(0.15)
    assert row["random"] == pytest.approx(1 / 3) and row["captured"] is None
    assert row["gain"][0] == pytest.approx(0.25 - 1 / 3)


def test_the_curve_shows_the_watched_reward_of_each_policy(tiny_config):
    """A run that watches a second reward gets its columns on the curve: each policy's self-edits, no
    update and the passage alone scored by it, and the paired differences, by hand."""
    run = Run.create(tiny_config.model_copy(deep=True), "restem")
    watched = {1: {"a": [[0.1, 0.3], [0.2, 0.2]], "b": [[0.5, 0.7], [0.4, 0.4]]},
               2: {"a": [[0.4, 0.4], [0.3, 0.5]], "b": [[0.5, 0.5], [0.6, 0.8]]}}
    for r, ctxs in watched.items():
        for cid, matrix in ctxs.items():
            run.append("samples", f"round{r}/samples/{cid}", round=r, context_id=cid, prompt="p", self_edits=["x", "y"])
            run.append("pre_update", f"round{r}/pre/{cid}", round=r, context_id=cid, reward=0.0,
                       watched={"reward": 0.05 if cid == "a" else 0.15})
            for t in range(2):
                run.append("self_edit_eval", f"round{r}/passage/{cid}/{t}", round=r, context_id=cid, repeat=t,
                           baseline="passage", reward=0.2, watched={"reward": 0.3}, self_edit=None)
                for i, row in enumerate(matrix):
                    run.append("self_edit_eval", f"round{r}/eval/{cid}/{i}/{t}", round=r, context_id=cid, sample=i,
                               repeat=t, reward=1.0, watched={"reward": row[t]}, self_edit="x")
    table = learning_curve(run)
    first, second = table.rows
    mean = {r: {c: statistics.fmean(x for row in m for x in row) for c, m in ctxs.items()} for r, ctxs in watched.items()}
    assert first["watched"] == pytest.approx(statistics.fmean(mean[1].values()))  # (0.2 + 0.5) / 2
    assert first["watched pre"] == pytest.approx(0.1) and first["watched alone"] == pytest.approx(0.3)
    assert first["watched vs alone"][0] == pytest.approx(statistics.fmean(mean[1].values()) - 0.3)
    assert first["watched vs previous"] is None and second["watched vs base"] is None  # round 1's is "vs previous"
    assert second["watched vs previous"][0] == pytest.approx(statistics.fmean(mean[2][c] - mean[1][c] for c in "ab"))
    assert "watched: vs previous policy (paired, 95% CI)" in table.markdown()
    assert "watched reward" not in learning_curve(fake_run(tiny_config)[0]).markdown()  # only where watched


def test_policy_rounds_caps_the_rows_of_each_policy_run(tiny_config):
    args = overrides(tiny_config)
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args, "--set", "restem.rounds=2",
                               "--set", "restem.evaluate_policy=false"]).exit_code == 0
    [policy] = list(Path(tiny_config.runs_dir).iterdir())
    evaluate = ["knowledge", "evaluate", "--quiet", *args, "--set", "eval.base_self_edits=false", "--policy", str(policy)]
    assert runner.invoke(app, [*evaluate, "--set", "eval.policy_rounds=1"]).exit_code == 0
    [run_dir] = [p for p in policy.parent.iterdir() if p.name.startswith("evaluate")]
    rows = [r for r in seal.table(Run.resume(run_dir)).rows if "SEAL" in r["condition"]]
    assert {r["round"] for r in rows} == {1}
    assert all(r["vs own passage only"] is None for r in rows)  # no passage-only row of the policy to compare with
    assert runner.invoke(app, evaluate).exit_code == 0  # 0, the default: every finished round
    [other] = [p for p in policy.parent.iterdir() if p.name.startswith("evaluate") and p != run_dir]
    assert {r["round"] for r in seal.table(Run.resume(other)).rows if "SEAL" in r["condition"]} == {1, 2}


def test_the_table_shows_how_diverse_each_rows_self_edits_are(tiny_config):
    """distinct-2 and passage coverage of a row's self-edits (one a passage), by hand; a row under a second
    objective trains the first objective's self-edits and shows theirs; rows without self-edits show none."""
    from seal.knowledge.evaluate import table

    cfg = tiny_config.model_copy(deep=True)
    cfg.eval.objectives = ["lm", "distill"]
    run = Run.create(cfg, "evaluate")
    a, b = load_builtin()[:2]
    texts = {a.id: "the observatory the observatory founded", b.id: "zzz qqq www"}  # bigrams 3 of 4 distinct; 2 of 2
    for p in (a, b):
        row = dict(context_id=p.id, answers=["x"], grades={"loglik": [0.1]}, reward=0.1)
        run.append("pre_update", f"eval/pre/base model, no update/{p.id}", condition="base model, no update",
                   row="no-update", round=0, **row)
        run.append("samples", f"eval/samples/passage + base self-edits/{p.id}", condition="passage + base self-edits",
                   context_id=p.id, prompt="p", self_edits=[texts[p.id]], error=None)
        for name, objective in (("passage only", "lm"), ("passage + base self-edits", "lm"),
                                ("passage + base self-edits [distill]", "distill")):
            run.append("self_edit_eval", f"eval/eval/{name}/{p.id}/0", condition=name, row="self-edits", round=0,
                       objective={"name": objective}, self_edit=None if name == "passage only" else texts[p.id],
                       **{**row, "reward": 0.2})
    rows = {r["condition"]: r for r in table(run).rows}
    from seal.core.curves import words

    content = lambda p: {w for w in words(p.context) if len(w) >= 4}
    for name in ("passage + base self-edits", "passage + base self-edits [distill]"):
        assert rows[name]["distinct-2"] == pytest.approx((3 / 4 + 2 / 2) / 2)
        assert rows[name]["coverage"] == pytest.approx((coverage([texts[a.id]], a.context)
                                                       + coverage([texts[b.id]], b.context)) / 2)
    assert rows["passage + base self-edits"]["coverage"] == pytest.approx(
        (len({"observatory", "founded"}) / len(content(a)) + 0.0) / 2)
    assert rows["passage only"]["distinct-2"] is None and rows["base model, no update"]["coverage"] is None
    assert "passage coverage" in table(run).markdown().splitlines()[0]


def test_policy_self_edits_pair_with_the_base_self_edits_and_the_sentences_of_their_own_update(tiny_config):
    """vs base self-edits and vs passage sentences, by hand: each self-edit row against the row of that kind
    trained with the same objective, passage by passage; none for rows the question does not apply to."""
    from seal.knowledge.evaluate import table

    cfg = tiny_config.model_copy(deep=True)
    cfg.eval.objectives = ["lm", "distill"]
    run = Run.create(cfg, "evaluate")
    rewards = {  # (row name, kind, round, objective): reward on passages a and b
        ("passage sentences", "sentences", None, "lm"): (0.30, 0.10),
        ("passage sentences [distill]", "sentences", None, "distill"): (0.20, 0.20),
        ("passage + base self-edits", "self-edits", 0, "lm"): (0.25, 0.05),
        ("passage + base self-edits [distill]", "self-edits", 0, "distill"): (0.10, 0.30),
        ("passage + SEAL round 1 self-edits", "self-edits", 1, "lm"): (0.40, 0.00),
        ("passage + SEAL round 1 self-edits [distill]", "self-edits", 1, "distill"): (0.15, 0.45),
    }
    for pid in "ab":
        run.append("pre_update", f"eval/pre/base model, no update/{pid}", condition="base model, no update",
                   row="no-update", round=0, context_id=pid, answers=["x"], grades={}, reward=0.0)
    for (name, kind, round_, objective), values in rewards.items():
        for pid, reward in zip("ab", values):
            run.append("self_edit_eval", f"eval/eval/{name}/{pid}/0", condition=name, row=kind, round=round_,
                       objective={"name": objective}, context_id=pid, answers=["x"], grades={}, reward=reward)
    rows = {r["condition"]: r for r in table(run).rows}
    diff = lambda x, y: statistics.fmean(rewards[x][i] - rewards[y][i] for i in range(2))
    keys = {name: key for key in rewards for name in [key[0]]}
    for suffix in ("", " [distill]"):
        policy, base, sentences = (keys[f"{n}{suffix}"] for n in ("passage + SEAL round 1 self-edits",
                                                                   "passage + base self-edits", "passage sentences"))
        assert rows[policy[0]]["vs base self-edits"][0] == pytest.approx(diff(policy, base))
        assert rows[policy[0]]["vs passage sentences"][0] == pytest.approx(diff(policy, sentences))
        assert rows[base[0]]["vs passage sentences"][0] == pytest.approx(diff(base, sentences))
        assert rows[base[0]]["vs base self-edits"] is None and rows[sentences[0]]["vs passage sentences"] is None
    assert rows["base model, no update"]["vs passage sentences"] is None


def test_quiet_commands_print_no_progress_bars(tiny_config):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as a fresh process has it
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *overrides(tiny_config),
                                 "--set", "restem.rounds=0"])
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output and "it/s]" not in result.output, result.output
