"""The update objectives (core/objectives.py) and context distillation, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from helpers import overrides
from seal.cli import app
from seal.core.config import DistillConfig, LoraTrainConfig, load_config
from seal.core.models import load_model
from seal.core.multi_lora import adapter_bank, train_bank
from seal.core.objectives import TeacherCache, make_objective, skip_first_targets, teacher_targets
from seal.core.training import collate, fresh_adapter, lm_examples, objective_loss, train
from seal.knowledge.data import load_builtin
from seal.knowledge.documents import sentences
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.grading import discrimination, distractors
from seal.knowledge.self_edit import training_set

TEXTS = ["The lighthouse of Varn was lit in 1821.", "Its keeper was Ida Morrow.", "Barges pay a toll of three coins."]
PREFIX = "Topic: Varn\nThe lighthouse of Varn was lit in 1821 by Ida Morrow, its first keeper.\n"


@pytest.fixture
def sharp(tiny):
    """The tiny model with its output layer scaled up: a random model's next-token distributions are
    nearly uniform, and the KL between two of them (~1e-7) would be float noise."""
    with torch.no_grad():
        tiny.model.get_output_embeddings().weight.mul_(40)
    return tiny


def _cfg(**kw) -> LoraTrainConfig:
    base = dict(rank=4, alpha=8, lr=5e-3, epochs=2, batch_size=2, target_modules=["q_proj", "v_proj", "down_proj"])
    return LoraTrainConfig(**{**base, **kw})


def _distill(**kw):
    return make_objective(kw.pop("name", "distill"), distill=DistillConfig(**kw))


def _with_teacher(lm, objective, prefix=PREFIX, texts=TEXTS):
    examples = lm_examples(lm.tokenizer, texts, 64)
    ids = lm.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    teacher_targets(lm, examples, [ids] * len(examples), objective)
    return examples, ids


@torch.no_grad()
def _full_logits(lm, ids: list[int]) -> torch.Tensor:
    return lm.model(input_ids=torch.tensor([ids])).logits[0].double()


def test_distill_loss_equals_a_hand_computation(sharp, tiny_dir):
    """Top-k plus the tail bucket, on target tokens only, at a temperature: computed token by token. The
    teacher is another model here (perturbed weights), so that the two distributions differ clearly."""
    tiny = sharp
    other = load_model(str(tiny_dir), "cpu")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.std())
        other.model.get_output_embeddings().weight.mul_(40)
    objective = _distill(top_k=5, temperature=2.0)
    examples, prefix = _with_teacher(other, objective)
    got = objective_loss(tiny.model, collate(examples, tiny.tokenizer.pad_token_id), examples, objective).item()
    assert got > 1e-2
    per_token = []
    for e in examples:
        teacher, student = _full_logits(other, prefix + e.input_ids), _full_logits(tiny, e.input_ids)
        for j in range(1, len(e.input_ids)):  # label j is predicted at position j - 1
            p = torch.softmax(teacher[len(prefix) + j - 1] / 2.0, -1)
            q = torch.softmax(student[j - 1] / 2.0, -1)
            top = p.topk(5).indices.tolist()
            rest = [i for i in range(len(p)) if i not in top]
            kl = sum(p[i] * (p[i].log() - q[i].log()) for i in top)
            p_tail, q_tail = p[rest].sum(), q[rest].sum()
            per_token.append(float((kl + p_tail * (p_tail.log() - q_tail.log())) * 4.0))
    assert got == pytest.approx(sum(per_token) / len(per_token), rel=1e-4)


def test_a_top_k_of_the_whole_vocabulary_is_the_full_kl(sharp):
    tiny = sharp
    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    objective = _distill(top_k=vocab)
    examples, prefix = _with_teacher(tiny, objective, texts=TEXTS[:2])
    teachers = [_full_logits(tiny, prefix + e.input_ids) for e in examples]
    # a student that differs from its teacher by more than reading the prefix (which the random model
    # barely does: a KL of ~1e-4, at the level of fp32 rounding over 49k tokens), so that the value tested
    # is not float noise and the direction of the KL matters
    with torch.no_grad():
        tiny.model.get_output_embeddings().weight.mul_(1.5)
    got = objective_loss(tiny.model, collate(examples, tiny.tokenizer.pad_token_id), examples, objective).item()
    full, reverse = [], []
    for e, teacher in zip(examples, teachers):
        student = _full_logits(tiny, e.input_ids)
        n = len(e.input_ids) - 1
        logp = torch.log_softmax(teacher[len(prefix):len(prefix) + n], -1)
        logq = torch.log_softmax(student[:n], -1)
        full += F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).tolist()
        reverse += F.kl_div(logp, logq, log_target=True, reduction="none").sum(-1).tolist()
    assert got > 0.01
    assert got == pytest.approx(sum(full) / len(full), rel=1e-4)
    assert got != pytest.approx(sum(reverse) / len(reverse), rel=1e-2)  # KL(teacher || student), not the reverse


def test_a_student_equal_to_its_teacher_has_zero_loss_and_zero_gradient(sharp):
    """The teacher reads nothing more than the student: a fresh adapter (B = 0) changes nothing."""
    tiny = sharp
    objective = _distill(top_k=8)
    examples, _ = _with_teacher(tiny, objective, prefix="")
    with fresh_adapter(tiny, _cfg(), seed=1) as wrapped:
        wrapped.train()
        loss = objective_loss(wrapped, collate(examples, tiny.tokenizer.pad_token_id), examples, objective)
        loss.backward()
        grads = [p.grad for n, p in wrapped.named_parameters() if "lora_" in n]
    assert abs(loss.item()) < 1e-6
    assert grads and max(g.abs().max().item() for g in grads) < 1e-6


def test_mix_is_distill_plus_its_weight_times_lm(sharp):
    tiny = sharp
    batch_of = lambda examples: collate(examples, tiny.tokenizer.pad_token_id)
    mix = _distill(name="mix", top_k=6, mix=0.3)
    examples, _ = _with_teacher(tiny, mix)
    def loss(name):
        objective = make_objective(name, distill=DistillConfig(top_k=6))
        return objective_loss(tiny.model, batch_of(examples), examples, objective).item()
    assert objective_loss(tiny.model, batch_of(examples), examples, mix).item() == pytest.approx(
        loss("distill") + 0.3 * loss("lm"), rel=1e-5)


def train_alone(lm, data, cfg, seed, objective):
    """(stats, LoRA weights by name) of one PEFT adapter trained on `data` with `objective`."""
    with fresh_adapter(lm, cfg, seed) as wrapped:
        stats = train(wrapped, data, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id, device=lm.device, objective=objective)
        return stats, {n.removeprefix("base_model.model.").replace(".default", ""): p.detach().clone()
                       for n, p in wrapped.named_parameters() if "lora_" in n}


def assert_bank_trains_as_alone(lm, datasets, cfg, seeds, objective, atol: float = 1e-5):
    """The batched adapter bank trains each adapter to what one PEFT adapter at a time trains (the first
    loss, the steps, every LoRA weight to `atol`), and the adapters did move."""
    alone = [train_alone(lm, data, cfg, seed, objective) for data, seed in zip(datasets, seeds)]
    with adapter_bank(lm, cfg, seeds) as bank:
        stats = train_bank(lm, bank, datasets, cfg, seeds=seeds, max_tokens=40, objective=objective)
        batched = [bank.adapter_state(k) for k in range(len(seeds))]
    for (st, state), got, bst in zip(alone, batched, stats):
        assert bst.first_loss == pytest.approx(st.first_loss, rel=1e-4) and bst.steps == st.steps
        for n, expected in state.items():
            torch.testing.assert_close(got[n], expected, atol=atol, rtol=1e-5)
        assert any(v.abs().max() > 0 for n, v in got.items() if "lora_B" in n)


@pytest.mark.parametrize("name", ["distill", "mix"])
def test_batched_training_equals_one_at_a_time_under_distillation(sharp, tiny_dir, name):
    """The teacher is another model (perturbed weights): a student that starts as its own teacher has a
    loss near 0 and gradients of float32 rounding, which Adam scales up to full steps (machine noise)."""
    tiny = sharp
    teacher = load_model(str(tiny_dir), "cpu")
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.std())
    objective = _distill(name=name, top_k=4)
    cfg = _cfg()
    seeds = [5, 6]
    datasets = [_with_teacher(teacher, objective, texts=TEXTS[:2])[0], _with_teacher(teacher, objective, texts=TEXTS)[0]]
    assert_bank_trains_as_alone(tiny, datasets, cfg, seeds, objective)


def test_teacher_distributions_are_cached_and_read_back(tiny, tmp_path, monkeypatch):
    objective = _distill(top_k=3)
    cache = TeacherCache(tmp_path / "teacher")
    first = lm_examples(tiny.tokenizer, TEXTS, 64)
    prefix = tiny.tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    teacher_targets(tiny, first, [prefix] * 3, objective, cache=cache)
    assert len(list((tmp_path / "teacher").rglob("*.pt"))) == 3

    def no_forward(*args, **kwargs):
        raise AssertionError("the teacher ran again")
    monkeypatch.setattr(tiny.model.get_decoder(), "forward", no_forward)
    again = lm_examples(tiny.tokenizer, TEXTS, 64)  # as a resumed run builds them
    teacher_targets(tiny, again, [prefix] * 3, objective, cache=cache)
    for a, b in zip(first, again):
        assert torch.equal(a.teacher.ids, b.teacher.ids) and torch.equal(a.teacher.logp, b.teacher.logp)
    other = lm_examples(tiny.tokenizer, TEXTS[:1], 64)  # another top_k is another key: computed, not read
    with pytest.raises(AssertionError, match="ran again"):
        teacher_targets(tiny, other, [prefix], _distill(top_k=4), cache=cache)


def test_skip_tokens_drops_the_first_targets_of_each_item(tiny):
    [e] = lm_examples(tiny.tokenizer, TEXTS[:1], 64)
    skipped = skip_first_targets(e, 3)
    assert skipped.labels[:4] == [e.labels[0], -100, -100, -100] and skipped.labels[4:] == e.labels[4:]


def test_the_teacher_reads_the_passage_and_never_a_question(tiny, tiny_config, monkeypatch):
    """Every row the teacher computes is the passage context followed by a training item; no question
    the passage is scored on appears in it."""
    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.objective = "distill"
    domain = KnowledgeDomain(cfg)
    passage = load_builtin()[0]
    seen = []
    decoder = tiny.model.get_decoder()
    original = decoder.forward

    def spy(*args, **kwargs):
        if not torch.is_grad_enabled():
            seen.extend(tiny.tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True))
        return original(*args, **kwargs)
    monkeypatch.setattr(decoder, "forward", spy)
    pre = dict(reward=0.0)
    result = domain.evaluate(tiny, passage, "It was built long ago.\nIt is famous.", seed=0, pre=pre)
    monkeypatch.setattr(decoder, "forward", original)
    assert result["valid"] and result["objective"]["name"] == "distill"
    teacher_rows = [t for t in seen if t.startswith(f"Topic: {passage.title}\n{passage.context}")]
    assert len(teacher_rows) == 3  # two lines and the passage
    for row in teacher_rows:
        assert not any(q.question in row for q in passage.questions)


def test_sentences_and_item_formats():
    assert sentences("It opened in 1903. Locks raise boats 3.5 m. \"Yes,\" he said! Why? No.") == [
        "It opened in 1903.", "Locks raise boats 3.5 m.", "\"Yes,\" he said!", "Why?", "No."]
    passage = load_builtin()[0]
    data = training_set(passage, None, item_format="topic", passage_items="sentences")
    assert len(data.sequences) == len(sentences(passage.context)) > 1
    assert all(s.startswith(f"Topic: {passage.title}\n") for s in data.sequences)
    edit = training_set(passage, "A fact about it here.", item_format="Q {title}: {line}")
    assert edit.sequences[0] == f"Q {passage.title}: A fact about it here."
    with pytest.raises(Exception, match="item_format"):
        load_config(None, ["inner_loop.item_format=no placeholders"])
    with pytest.raises(Exception, match=r"inner_loop\.objective"):
        load_config(None, ["domain=arc", "inner_loop.objective=distill"])


def test_distractors_are_spans_of_the_passage_that_do_not_answer():
    text = "The Hollis canal opened in 1903 under Mara Quill. It cost 40,000 crowns and reached Lake Ivel in 1911."
    got = distractors(text, ["1903"], ["Mara Quill"], 4)
    assert got[0] == "Mara Quill"  # the other questions' answers come first
    assert got[1:] == ["40,000", "1911", "The Hollis"][:3] or got[1:3] == ["40,000", "1911"]
    assert "1903" not in got
    assert not any("Quill" in d for d in distractors(text, ["Mara Quill"], [], 8))
    assert discrimination(-1.0, [-2.0, -0.5, -3.0, -1.0]) == 0.5
    assert discrimination(-1.0, []) is None


runner = CliRunner()


def test_a_table_with_both_objectives_pairs_their_rows(tiny_config):
    result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *overrides(tiny_config),
                                 "--set", "eval.objectives=[lm, distill]", "--set", "inner_loop.item_format=topic"])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    from seal.core.runs import Run
    from seal.knowledge.evaluate import table

    run = Run.resume(run_dir)
    t = table(run)
    rows = {r["condition"]: r for r in t.rows}
    for name in ("passage only", "passage sentences", "passage + base self-edits"):
        assert rows[name]["objective"] == "lm" and rows[f"{name} [distill]"]["objective"] == "distill"
        assert rows[name]["steps"] >= 1 and rows[f"{name} [distill]"]["steps"] == rows[name]["steps"]
        assert rows[f"{name} [distill]"]["vs best lm row"] is not None  # paired, passage by passage
        assert rows[name]["discrim"] is not None
    keys = {c.key for c in t.columns}
    assert {"discrim", "steps", "vs best lm row", "discrim vs base", "discrim gap closed"} <= keys
    # both objectives trained the same self-edit of each passage
    samples = [r for r in run.records("samples")]
    assert len(samples) == 2  # one per passage, shared by the lm and distill rows
    evals = {(r["condition"], r["context_id"]): r for r in run.records("self_edit_eval")}
    for (cond, pid), r in evals.items():
        if cond.endswith("[distill]"):
            twin = evals[(cond.removesuffix(" [distill]"), pid)]
            assert r["self_edit"] == twin["self_edit"] and r["seed"] == twin["seed"]
            assert r["objective"]["name"] == "distill" and twin["objective"]["name"] == "lm"
    assert list((run_dir / "cache" / "teacher").rglob("*.pt"))  # the teachers' distributions, for a resume
    resumed = runner.invoke(app, ["knowledge", "evaluate", "--quiet", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert len(Run.resume(run_dir).records()) == len(run.records())  # nothing redone


def test_recipe_rows_pair_with_the_tables_own_recipe(tiny_config):
    recipes = "eval.recipes={lr big: {lr: 0.01}, hot: {objective: distill, distill: {temperature: 2.0}}}"
    result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *overrides(tiny_config), "--set", recipes,
                                 "--set", "eval.passage_only=false", "--set", "eval.base_self_edits=false",
                                 "--set", "eval.objectives=[lm, distill]"])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    from seal.core.runs import Run
    from seal.knowledge.evaluate import table

    run = Run.resume(run_dir)
    rows = {r["condition"]: r for r in table(run).rows}
    trained = [n for n in rows if n.startswith("passage sentences")]
    assert trained == ["passage sentences", "passage sentences [distill]", "passage sentences [lm, lr big]",
                       "passage sentences [distill, lr big]", "passage sentences [distill, hot]"]
    assert rows["passage sentences [lm, lr big]"]["vs table's recipe"] is not None
    # A sweep read by objective and recipe: columns the table files leave out, printed when named.
    assert "recipe" not in [c.strip() for c in (run_dir / "table.md").read_text().splitlines()[0].split("|")]
    shown = runner.invoke(app, ["knowledge", "table", str(run_dir), "--columns", "row | objective | recipe | steps"])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if line.startswith("| passage sentences")]
    assert [line.split(" | ")[1:3] for line in lines] == [["lm", "table's"], ["distill", "table's"], ["lm", "lr big"],
                                                         ["distill", "lr big"], ["distill", "hot"]]
    evals = {(r["condition"], r["context_id"]): r for r in run.records("self_edit_eval")}
    for (cond, pid), r in evals.items():
        twin = evals[("passage sentences", pid)]
        assert r["seed"] == twin["seed"] and r["train"]["steps"] == twin["train"]["steps"]  # paired
        if cond == "passage sentences [distill, hot]":
            assert r["objective"] == dict(twin["objective"] | evals[("passage sentences [distill]", pid)]["objective"],
                                          temperature=2.0)
            assert r["recipe"] == "hot"
        if "lr big" in cond:  # a different recipe: a different update, from the same start
            assert r["train"]["first_loss"] == pytest.approx(evals[(cond.split(" [")[0] + (
                " [distill]" if "distill" in cond else ""), pid)]["train"]["first_loss"], rel=1e-4)
            assert r["train"]["last_loss"] != evals[("passage sentences", pid)]["train"]["last_loss"]


def test_a_bad_recipe_is_one_line_naming_it(tiny_config):
    for bad, says in (("{fast: {lr: -1}}", "eval.recipes.fast.lr"), ("{fast: {lrr: 1}}", "eval.recipes.fast.lrr"),
                      ("{fast: {distill: {top_k: 0}}}", "eval.recipes.fast.distill.top_k")):
        result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *overrides(tiny_config),
                                     "--set", f"eval.recipes={bad}"])
        assert result.exit_code != 0 and says in result.output, result.output
    result = runner.invoke(app, ["knowledge", "cpt", "--quiet", *overrides(tiny_config),
                                 "--set", "eval.recipes={fast: {lr: 0.01}}"])
    assert result.exit_code != 0 and "eval.recipes" in result.output


def _spy_on_teach(monkeypatch, module):
    """Record what `teach` (or, for a pooled update, `teach_store`) is given in `module`: each example's
    text and the context its teacher reads."""
    import seal.core.inner_loop as inner_loop

    seen = []
    name = "teach" if hasattr(module, "teach") else "teach_store"
    real = getattr(inner_loop, name)

    def spy(lm, domain, examples, contexts, *args, **kw):
        seen.extend((lm.tokenizer.decode(examples[i].input_ids), c) for i, c in zip(range(len(examples)), contexts))
        return real(lm, domain, examples, contexts, *args, **kw)
    monkeypatch.setattr(module, name, spy)
    return seen


def test_cpt_trains_every_row_with_each_objective_its_teacher_reading_each_sequences_own_passage(tiny_config, monkeypatch):
    import seal.knowledge.cpt as cpt

    seen = _spy_on_teach(monkeypatch, cpt)
    args = overrides(tiny_config) + ["--set", "data.eval_passages=3", "--set", "cpt.epochs=1", "--set", "cpt.rank=4",
                                     "--set", "cpt.alpha=8", "--set", "eval.objectives=[lm, distill]",
                                     "--set", "eval.base_self_edits=false"]
    result = runner.invoke(app, ["knowledge", "cpt", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    from seal.core.runs import Run
    from seal.knowledge.cpt import table

    run = Run.resume(run_dir)
    trains = {r["condition"]: r for r in run.records("cpt_train")}
    assert {n: r["objective"]["name"] for n, r in trains.items()} == {
        "passage only": "lm", "passage only [distill]": "distill",
        "passage sentences": "lm", "passage sentences [distill]": "distill"}
    # the same sequences, another loss: the first step's loss is a KL to the teacher, not an NLL
    assert trains["passage only [distill]"]["train"]["steps"] == trains["passage only"]["train"]["steps"]
    assert trains["passage only [distill]"]["train"]["first_loss"] != trains["passage only"]["train"]["first_loss"]
    rows = {r["condition"]: r for r in table(run).rows}
    assert rows["passage sentences [distill]"]["vs best lm row"] is not None
    sentences = [(text, c) for text, c in seen if text.count("\n") == 1 and c.context not in text]
    assert seen and sentences  # every sequence with the passage it came from
    assert all(text.split("\n", 1)[1] in c.context and c.title in text for text, c in seen)
    assert len({c.id for _, c in seen}) == 3
    n = len(run.records())
    again = runner.invoke(app, ["knowledge", "cpt", "--quiet", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert len(Run.resume(run_dir).records()) == n  # nothing redone


def test_continual_trains_its_steps_with_the_inner_loops_objective(tiny_config, monkeypatch):
    import seal.knowledge.continual as continual

    seen = _spy_on_teach(monkeypatch, continual)
    args = overrides(tiny_config) + ["--set", "data.eval_passages=3", "--set", "continual.steps=2",
                                     "--set", "continual.sequences=1", "--set", "inner_loop.objective=distill"]
    result = runner.invoke(app, ["knowledge", "continual", "--quiet", *args, "--remedy", "none", "--remedy", "route"])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    from seal.core.runs import Run

    steps = Run.resume(run_dir).records("continual_step")
    assert len(steps) == 4 and all(r["objective"]["name"] == "distill" for r in steps)
    assert any(r["train"] for r in steps)
    assert all(c.title in text for text, c in seen) and seen
    assert list((run_dir / "cache" / "teacher").rglob("*.pt"))


def test_learn_trains_the_kept_self_edits_with_learn_objective(tiny_config, tmp_path, monkeypatch):
    import seal.knowledge.learn as learn
    from helpers import EXAMPLES

    seen = _spy_on_teach(monkeypatch, learn)
    args = overrides(tiny_config) + ["--set", "learn.k=1", "--set", "learn.epochs=1", "--set", "learn.rank=4",
                                     "--set", "learn.alpha=8", "--set", "learn.max_passage_tokens=120",
                                     "--set", "learn.objective=distill", "--set", "inner_loop.item_format=topic"]
    out = tmp_path / "learned"
    result = runner.invoke(app, ["learn", str(EXAMPLES), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = [p for p in Path(tiny_config.runs_dir).iterdir() if p.name.startswith("learn-")]
    from seal.core.runs import Run

    [update] = Run.resume(run_dir).records("learn_train")
    assert update["objective"]["name"] == "distill" and update["sequences"] == len(seen)
    # the update trains items keyed as the inner loop that selected them, each taught by its own passage
    assert all(text.startswith(f"Topic: {c.title}\n") for text, c in seen)
    answer = runner.invoke(app, ["ask", str(out), "Who was the first keeper of the Velmora lighthouse?"])
    assert answer.exit_code == 0, answer.output


def test_probes_train_the_teachers_open_book_answer_after_the_question(tiny, tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.self_edit_items = "probes"
    domain = KnowledgeDomain(cfg)
    passage = load_builtin()[0]
    update = domain.prepare(tiny, passage, "Who keeps the lighthouse?\nWhen was it built?", seed=0, pre=dict(reward=0.0))
    assert update.examples is not None and update.record["n_lines"] == 2
    *probes, whole = update.examples
    assert len(probes) == 2 - update.record["dropped"].get("no teacher answer", 0)
    for e, q in zip(probes, ["Who keeps the lighthouse?", "When was it built?"]):
        text = tiny.tokenizer.decode(e.input_ids)
        assert text.startswith(f"Topic: {passage.title}\nQuestion: {q}\nAnswer:")
        targets = [t for t in e.labels if t != -100]
        assert 0 < len(targets) <= cfg.answer.max_new_tokens  # the answer only
        assert passage.context not in text  # the student never reads the passage
    assert tiny.tokenizer.decode(whole.input_ids) == f"{passage.title}\n{passage.context}"
    result = domain.evaluate(tiny, passage, "Who keeps the lighthouse?", seed=0, pre=dict(reward=0.0))
    assert result["valid"]


def test_distillation_runs_under_bf16_on_both_paths(sharp):
    """The teacher pass and both training loops under bf16 autocast (on bf16 copies of the weights)."""
    import warnings

    objective = _distill(top_k=4)
    cfg = _cfg(epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without bf16 instructions warns once
        examples = lm_examples(sharp.tokenizer, TEXTS, 64)
        prefix = sharp.tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
        teacher_targets(sharp, examples, [prefix] * 3, objective, precision="bf16")
        with fresh_adapter(sharp, cfg, 1) as wrapped:
            alone = train(wrapped, examples, cfg, seed=1, pad_id=sharp.tokenizer.pad_token_id, device=sharp.device,
                          precision="bf16", objective=objective)
        with adapter_bank(sharp, cfg, [1]) as bank:
            [batched] = train_bank(sharp, bank, [examples], cfg, seeds=[1], precision="bf16", objective=objective)
    assert torch.isfinite(examples[0].teacher.logp).all()
    assert alone.first_loss == pytest.approx(batched.first_loss, rel=0.05) and alone.first_loss > 0
