"""`seal arc choices`: a round's self-edits counted by task and by choice, from the records alone."""

from typer.testing import CliRunner

from seal.arc.choices import choices
from seal.cli import app
from seal.core.config import load_config
from seal.core.runs import Run

runner = CliRunner()


def recipe(**changes) -> dict:
    return dict(dict(basic=True, size=False, chain=False, repeat=False, strategy="outputs", lr=0.001, epochs=2), **changes)


def recorded_round(tmp_path) -> Run:
    """Two tasks, k = 3, one self-edit of B trained twice and solving once; one unusable; a round-2 record
    that round 1's counts must leave out."""
    run = Run.create(load_config(None, [f"runs_dir={tmp_path}", "model.precision=fp32"], domain="arc"), "arc-restem")
    evals = [("A", 0, 0, True, recipe(), 1.0), ("A", 1, 0, True, recipe(basic=False), 0.0),
             ("A", 2, 0, False, None, 0.0),
             ("B", 0, 0, True, recipe(lr=0.003), 1.0), ("B", 1, 0, True, recipe(epochs=1), 1.0),
             ("B", 2, 0, True, recipe(basic=False), 0.0), ("B", 2, 1, True, recipe(basic=False), 1.0)]
    for task, sample, repeat, valid, rec, reward in evals:
        run.append("self_edit_eval", f"round1/eval/{task}/{sample}/{repeat}", context_id=task, sample=sample,
                   repeat=repeat, valid=valid, recipe=rec, reward=reward, problem=None if valid else "no JSON object")
    run.append("self_edit_eval", "round2/eval/A/0/0", context_id="A", sample=0, repeat=0, valid=True, recipe=recipe(),
               reward=0.0)
    return run


def test_counts_by_task_and_by_choice(tmp_path):
    tasks, chosen = choices(recorded_round(tmp_path), 1)
    assert [(r["task"], r["self-edits"], r["usable"], r["solved"]) for r in tasks.rows] == [
        ("A", 3, 2, "1"), ("B", 3, 3, "2.50"), ("all", 6, 5, "3.50")]
    rows = {(r["choice"], r["value"]): (r["usable"], r["solved"]) for r in chosen.rows}
    assert rows[("basic augmentations", "true")] == (3, "3") and rows[("basic augmentations", "false")] == (2, "0.50")
    assert rows[("learning rate", "0.001")] == (4, "2.50") and rows[("learning rate", "0.003")] == (1, "1")
    assert rows[("epochs", "2")] == (4, "2.50") and rows[("epochs", "1")] == (1, "1")
    assert sum(n for (choice, _), (n, _) in rows.items() if choice == "loss on") == 5  # the unusable one is left out
    basic = [r["value"] for r in chosen.rows if r["choice"] == "basic augmentations"]
    assert basic == ["true", "false"]  # the most chosen first


def test_the_command_prints_both_tables_and_names_a_missing_round(tmp_path):
    run = recorded_round(tmp_path)
    shown = runner.invoke(app, ["arc", "choices", str(run.path)])
    assert shown.exit_code == 0, shown.output
    assert "| all | 6 | 5 | 3.50 |" in shown.output and "| basic augmentations | true | 3 | 3 | 1.00 |" in shown.output
    missing = runner.invoke(app, ["arc", "choices", str(run.path), "--round", "3"])
    assert missing.exit_code == 2 and "no evaluated self-edits of round 3 (rounds recorded: 1, 2)" in " ".join(missing.output.split())
