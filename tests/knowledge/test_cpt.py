"""Continued pretraining on the tiny model: the token store, the pooled update, the table, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import overrides
from seal.cli import app
from seal.core.runs import Run
from seal.core.token_store import TokenStore
from seal.core.training import temporary_update

runner = CliRunner()


def test_token_store_round_trips_and_reads_from_disk(tmp_path, tokenizer):
    texts = ["The Zorbian moon is purple.", "", "A second, longer sequence about the Zorbian moon and its tides."]
    store = TokenStore.write(tmp_path / "s", tokenizer, iter(texts), max_len=8)
    assert len(store) == 3
    for text, i in zip(texts, range(3)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:8]
        assert store[i].input_ids == ids and store[i].labels == ids
    assert store.n_tokens == sum(len(store[i].input_ids) for i in range(3))
    assert isinstance(store.tokens, np.memmap)  # read from the file, not held as Python lists
    reopened = TokenStore(tmp_path / "s")
    assert reopened[2].input_ids == store[2].input_ids
    with pytest.raises(IndexError):
        store[3]


@pytest.mark.parametrize("full", [False, True])
def test_temporary_update_changes_then_restores_the_model(tiny, tiny_config, tmp_path, full):
    store = TokenStore.write(tmp_path / "s", tiny.tokenizer, ["alpha beta gamma delta"] * 4, max_len=16)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    x = torch.tensor([store[0].input_ids])
    ref = tiny.model(x).logits
    cfg = tiny_config.cpt.model_copy(update=dict(rank=4, alpha=8, epochs=2, batch_size=2, lr=1e-2))
    with temporary_update(tiny, store, cfg, full=full, seed=0, precision="fp32",
                          adapter_dir=None if full else tmp_path / "adapter") as stats:
        assert stats.steps == 4
        assert not torch.allclose(tiny.model(x).logits, ref)
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    assert not any(p.requires_grad for p in tiny.model.parameters())
    if not full:  # a saved adapter is loaded, not retrained, on the next use
        with temporary_update(tiny, store, cfg, full=False, seed=0, precision="fp32",
                              adapter_dir=tmp_path / "adapter") as stats:
            assert stats is None
            assert not torch.allclose(tiny.model(x).logits, ref)


def test_cpt_command_table_and_resume(tiny_config):
    args = overrides(tiny_config) + ["--set", "data.eval_passages=3", "--set", "cpt.epochs=1",
                                     "--set", "cpt.rank=4", "--set", "cpt.alpha=8", "--set", "cpt.answer_chunk=2"]
    result = runner.invoke(app, ["knowledge", "cpt", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    table = (run_dir / "table.md").read_text()
    for row in ["base model, no update", "passage only", "passage sentences", "passage + base self-edits"]:
        assert f"| {row} |" in table
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["key"].startswith("eval/eval/")]
    assert len(evals) == 3 * 3 and {r["condition"] for r in evals} == {"passage only", "passage sentences",
                                                                       "passage + base self-edits"}
    data = {r["condition"]: r for r in records if r["kind"] == "cpt_data"}
    # pooled: passage only trains on the three passages; with self-edits, on more sequences
    assert data["passage only"]["sequences"] == 3
    assert data["passage sentences"]["sequences"] > 3  # one per sentence
    # every passage's usable self-edit adds its lines (a passage whose self-edit is unusable: its passage alone)
    from seal.knowledge.data import load_builtin
    from seal.knowledge.self_edit import training_set

    il, passages = Run.resume(run_dir).config.inner_loop, {p.id: p for p in load_builtin()}
    written = {r["context_id"]: r["self_edits"][0] for r in records if r["key"].startswith("eval/samples/passage + base self-edits/")}
    sets = [training_set(passages[pid], text, split_lines=il.split_lines, include_passage=il.include_passage,
                         max_lines=il.max_lines, item_format=il.item_format) for pid, text in written.items()]
    usable = [len(t.sequences) for t in sets if not t.problem]
    assert len(written) == 3 and usable and min(usable) > 1  # the random model's self-edits: some lines each
    assert data["passage + base self-edits"]["sequences"] == sum(usable) + (len(sets) - len(usable))
    assert data["passage + base self-edits"]["unusable_self_edits"].keys() == {pid for pid, t in zip(written, sets) if t.problem}
    store = TokenStore(run_dir / "cpt" / "passage-base-self-edits" / "sequences")
    assert len(store) == data["passage + base self-edits"]["sequences"]
    train = [r for r in records if r["kind"] == "cpt_train"]
    assert len(train) == 3 and all(r["train"]["steps"] >= 1 for r in train)

    # resume: nothing redone
    n = len(records)
    again = runner.invoke(app, ["knowledge", "cpt", "--quiet", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert len((run_dir / "records.jsonl").read_text().splitlines()) == n

    # a lost answer record is answered again with the saved adapter, not retrained
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    last = [i for i, line in enumerate(lines) if '"eval/eval/passage + base self-edits/' in line][-1]
    (run_dir / "records.jsonl").write_text("\n".join(lines[:last] + lines[last + 1:]) + "\n")
    again = runner.invoke(app, ["knowledge", "cpt", "--quiet", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    after = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(after) == n
    assert len([r for r in after if r["kind"] == "cpt_train"]) == 3


def test_cpt_full_finetuning(tiny_config):
    args = overrides(tiny_config) + ["--set", "cpt.update=full", "--set", "cpt.epochs=1", "--set", "cpt.lr=1e-4",
                                     "--set", "eval.base_self_edits=false"]
    result = runner.invoke(app, ["knowledge", "cpt", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    assert "| passage only |" in (run_dir / "table.md").read_text()
    assert not (run_dir / "cpt" / "passage-only" / "adapter").exists()


def test_cpt_with_a_seal_policy_adds_its_rows(tiny_config):
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *overrides(tiny_config)]).exit_code == 0
    [policy] = list(Path(tiny_config.runs_dir).iterdir())
    args = overrides(tiny_config) + ["--set", "cpt.epochs=1", "--set", "eval.passage_only=false",
                                     "--set", "eval.base_self_edits=false"]
    result = runner.invoke(app, ["knowledge", "cpt", "--quiet", "--policy", str(policy), *args])
    assert result.exit_code == 0, result.output
    [run_dir] = [p for p in Path(tiny_config.runs_dir).iterdir() if p.name.startswith("cpt")]
    table = (run_dir / "table.md").read_text()
    for row in ["base model, no update", "SEAL round 1, no update", "passage + SEAL round 1 self-edits"]:
        assert f"| {row} |" in table
    bad = runner.invoke(app, ["knowledge", "cpt", "--quiet", "--policy", str(run_dir / "nope"), *args])
    assert bad.exit_code == 2 and "not a run directory" in " ".join(bad.output.split())
