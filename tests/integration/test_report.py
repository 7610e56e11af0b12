"""seal report on recorded run directories: tables, figures, and the data written beside each figure."""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_config_at
from helpers import overrides
from seal.cli import app
from seal.core.runs import Run
from seal.knowledge.continual import summary
from seal.knowledge.evaluate import table
from seal.report import round_series

runner = CliRunner()


@pytest.fixture(scope="module")
def recorded(tiny_dir, tmp_path_factory):
    """A restem run and a continual run of the tiny model, recorded once for these tests (read only)."""
    tiny_config = tiny_config_at(tiny_dir, tmp_path_factory.mktemp("runs"))
    args = overrides(tiny_config)
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", *args]).exit_code == 0
    result = runner.invoke(app, ["knowledge", "continual", "--quiet", *args, "--set", "data.eval_passages=3",
                                 "--set", "continual.steps=3", "--remedy", "none", "--remedy", "replay"])
    assert result.exit_code == 0, result.output
    runs = sorted(Path(tiny_config.runs_dir).iterdir())
    return next(p for p in runs if p.name.startswith("restem")), next(p for p in runs if p.name.startswith("continual"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_of_a_restem_run(recorded):
    restem_dir, _ = recorded
    result = runner.invoke(app, ["report", str(restem_dir)])
    assert result.exit_code == 0, result.output
    out = restem_dir / "report"
    md = (out / "report.md").read_text()
    for name in ("conditions", "rounds", "rewards"):
        assert (out / f"{name}.png").stat().st_size > 5000
        assert f"]({name}.png)" in md and f"`{name}.csv`" in md
    rows = table(Run.resume(restem_dir)).rows
    plotted = read_csv(out / "conditions.csv")
    assert [r["condition"] for r in plotted] == [r["condition"] for r in rows]
    assert [float(r["reward"]) for r in plotted] == pytest.approx([r["reward"] for r in rows])
    rewards = read_csv(out / "rewards.csv")
    evals = [r for r in Run.resume(restem_dir).records("self_edit_eval") if r["key"].startswith("round") and "/eval/" in r["key"]]
    # round 1's E-step, then the round-1 policy's own (restem.evaluate_policy); not the passage-alone trainings
    assert len(rewards) == len(evals) and {r["round"] for r in rewards} == {"1", "2"}
    series = {(r["series"], r["round"]) for r in read_csv(out / "rounds.csv")}
    assert {("no update", "0"), ("no update", "1"), ("with its self-edits", "0"), ("with its self-edits", "1")} <= series


def test_report_of_a_continual_run_and_runs_side_by_side(recorded, tmp_path):
    restem_dir, continual_dir = recorded
    out = tmp_path / "both"
    result = runner.invoke(app, ["report", str(restem_dir), str(continual_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    prefix = continual_dir.name + "_"
    summ = summary(Run.resume(continual_dir))
    heat = json.loads((out / f"{prefix}forgetting.json").read_text())
    assert heat["none"]["mean"] == summ["none"]["mean"] and heat["replay"]["sd"] == summ["replay"]["sd"]
    assert len(heat["none"]["mean"]) == 3 and heat["none"]["mean"][0][2] is None  # lower triangular
    bars = read_csv(out / f"{prefix}retention_plasticity.csv")
    assert [b["remedy"] for b in bars] == ["none", "replay"]
    assert float(bars[0]["retention"]) == pytest.approx(summ["none"]["retention"][0])
    for name in ("forgetting.png", "retention_plasticity.png"):
        assert (out / f"{prefix}{name}").stat().st_size > 5000
    md = (out / "report.md").read_text()
    assert f"## {restem_dir.name} (restem)" in md and f"## {continual_dir.name} (continual)" in md
    assert "| none |" in md and "| replay |" in md


def test_report_side_by_side_tables_and_a_bad_directory(recorded, tmp_path):
    restem_dir, _ = recorded
    result = runner.invoke(app, ["report", str(restem_dir), str(restem_dir), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    compare = read_csv(tmp_path / "r" / "compare_conditions.csv")
    assert list(compare[0]) == ["condition", f"1-{restem_dir.name}", f"2-{restem_dir.name}"]
    assert all(r[f"1-{restem_dir.name}"] == r[f"2-{restem_dir.name}"] for r in compare)
    bad = runner.invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "not a run directory" in " ".join(bad.output.split())


def test_round_series_reads_each_rows_kind_and_round_not_its_name():
    rows = [{"condition": c, "kind": k, "round": r, "reward": v} for c, k, r, v in [
        ("base model, no update", "no-update", 0, 0.1), ("passage only", "passage", None, 0.2),
        ("passage + base self-edits", "self-edits", 0, 0.3), ("my own name", "no-update", 1, 0.15),
        ("passage + SEAL round 1 self-edits", "self-edits", 1, 0.35), ("TTT + oracle configuration", "oracle", None, 0.9),
        ("TTT + SEAL round 2 self-edits", "self-edits", 2, 0.5)]]
    series = round_series(rows, "reward")
    assert series["no update"] == {0: 0.1, 1: 0.15}
    assert series["with its self-edits"] == {0: 0.3, 1: 0.35, 2: 0.5}
    assert "on the passage alone" not in series  # the base model's passage row alone is no series
    rows.append({"condition": "SEAL round 1, passage only", "kind": "passage", "round": 1, "reward": 0.25})
    assert round_series(rows, "reward")["on the passage alone"] == {0: 0.2, 1: 0.25}


def test_every_table_record_carries_its_row_kind_and_round(recorded):
    restem_dir, _ = recorded
    run = Run.resume(restem_dir)
    evals = [r for r in run.records() if r["key"].startswith(("eval/pre/", "eval/eval/"))]
    assert evals and all("row" in r and "round" in r for r in evals)
    kinds = {(row["condition"], row["kind"], row["round"]) for row in table(run).rows}
    assert ("passage only", "passage", None) in kinds and ("SEAL round 1, no update", "no-update", 1) in kinds
    assert ("passage + SEAL round 1 self-edits", "self-edits", 1) in kinds


def test_paired_differences_equal_a_hand_computation(recorded):
    restem_dir, _ = recorded
    run = Run.resume(restem_dir)
    rows = {row["condition"]: row for row in table(run).rows}
    reward = lambda condition: {r["context_id"]: r["reward"] for r in run.records()
                                if r["key"].startswith(("eval/pre/", "eval/eval/")) and r["condition"] == condition}
    base, passage = reward("base model, no update"), reward("passage only")
    by_hand = sum(passage[p] - base[p] for p in base) / len(base)
    assert rows["passage only"]["vs base"][0] == pytest.approx(by_hand)
    assert rows["base model, no update"]["vs base"] is None and rows["passage only"]["vs passage only"] is None
    seal_row = rows["passage + SEAL round 1 self-edits"]
    own = reward("passage + SEAL round 1 self-edits")
    assert seal_row["vs passage only"][0] == pytest.approx(sum(own[p] - passage[p] for p in own) / len(own))
    assert "vs base (paired, 95% CI)" in (restem_dir / "table.md").read_text()


def test_the_open_book_row_never_trains_and_sets_the_ceiling(recorded):
    restem_dir, _ = recorded
    run = Run.resume(restem_dir)
    name = "open book (passage in the prompt), no update"
    records = [r for r in run.records() if r.get("condition") == name]
    assert records and all(r["kind"] == "pre_update" and r["row"] == "open-book" and "train" not in r for r in records)
    assert not [r for r in run.records("self_edit_eval") if r.get("condition") == name]


def test_gap_closed_equals_a_hand_computation(tiny_config):
    run = Run.create(tiny_config, "evaluate")
    rewards = {"base model, no update": ("no-update", [0.1, 0.2]), "open book (passage in the prompt), no update":
               ("open-book", [0.5, 0.6]), "passage only": ("passage", [0.2, 0.3])}
    for condition, (kind, values) in rewards.items():
        for pid, value in zip(["a", "b"], values):
            record = "pre_update" if kind != "passage" else "self_edit_eval"
            key = f"eval/pre/{condition}/{pid}" if kind != "passage" else f"eval/eval/{condition}/{pid}/0"
            run.append(record, key, condition=condition, context_id=pid, row=kind, round=None, reward=value,
                       answers=["x"], grades={"loglik": [-1.0]})
    rows = {row["condition"]: row for row in table(run).rows}
    assert rows["passage only"]["gap closed"] == pytest.approx((0.25 - 0.15) / (0.55 - 0.15))
    assert rows["base model, no update"]["gap closed"] == 0
    assert rows["open book (passage in the prompt), no update"]["gap closed"] == pytest.approx(1.0)


def test_open_book_questions_carry_their_passage(tiny, tiny_config, monkeypatch):
    from seal.knowledge import domain as knowledge_domain
    from seal.knowledge.data import load_builtin

    seen = []
    real = knowledge_domain.generate
    monkeypatch.setattr(knowledge_domain, "generate", lambda lm, prompts, **kw: seen.extend(prompts) or real(lm, prompts, **kw))
    passage = load_builtin()[0]
    d = knowledge_domain.KnowledgeDomain(tiny_config)
    d.score(tiny, passage, open_book=True)
    d.score(tiny, passage)
    n = len(d.questions(passage))
    assert all(passage.context in p for p in seen[:n]) and not any(passage.context in p for p in seen[n:])
