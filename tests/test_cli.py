"""The command line end to end on the tiny model: runs, tables, resume, and clear errors."""

import json

import pytest
from typer.testing import CliRunner

from seal.cli import app
from seal.config import load_config

runner = CliRunner()


def overrides(cfg) -> list[str]:
    args = []
    for key in ["model.name", "runs_dir", "model.precision", "data.train_passages", "data.eval_passages",
                "self_edit.max_new_tokens", "answer.max_new_tokens", "answer.max_questions",
                "inner_loop.epochs", "inner_loop.rank", "inner_loop.alpha", "restem.k", "restem.sft.epochs",
                "restem.sft.rank", "restem.sft.alpha", "eval.bootstrap"]:
        section, *rest = key.split(".")
        value = getattr(cfg, section)
        for part in rest:
            value = getattr(value, part)
        args += ["--set", f"{key}={value}"]
    return args


def test_restem_then_table_then_resume(tiny_config):
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", *overrides(tiny_config)])
    assert result.exit_code == 0, result.output
    [run_dir] = list((tiny_config.runs_dir and __import__("pathlib").Path(tiny_config.runs_dir)).iterdir())
    table = (run_dir / "table.md").read_text()
    for row in ["base model, no update", "passage only", "passage + base self-edits",
                "SEAL round 1, no update", "passage + SEAL round 1 self-edits"]:
        assert f"| {row} |" in table
    assert "reward (f1)" in table and "95% CI" in table
    saved = load_config(run_dir / "config.yaml")
    assert saved == tiny_config
    n_records = len((run_dir / "records.jsonl").read_text().splitlines())

    again = runner.invoke(app, ["knowledge", "table", str(run_dir)])
    assert again.exit_code == 0 and "passage only" in again.output
    assert "self-edit evaluations: 10, wall time mean" in again.output  # 2 x k=2 in the round, 3 x 2 in eval
    assert "round 1: " in again.output and "kept 2 self-edits" in again.output

    resumed = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert len((run_dir / "records.jsonl").read_text().splitlines()) == n_records  # nothing redone


def test_generate_writes_self_edits(tiny_config):
    result = runner.invoke(app, ["knowledge", "generate", "--quiet", "--n", "2", "--split", "eval",
                                 "--set", "self_edit.prompt=self-qa", *overrides(tiny_config)])
    assert result.exit_code == 0, result.output
    [run_dir] = list(__import__("pathlib").Path(tiny_config.runs_dir).iterdir())
    records = [json.loads(l) for l in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(len(r["self_edits"]) == 2 for r in records)
    assert "question-answer pairs" in records[0]["prompt"]


@pytest.mark.parametrize("args, message", [
    (["--set", "inner_loop.lrr=1"], "inner_loop.lrr: unknown field"),
    (["--set", "inner_loop.lr=-1"], "inner_loop.lr: Input should be greater than 0"),
    (["--set", "model.name=/no/such/model"], "neither an existing directory"),
    (["--set", "model.name=/no/such.gguf"], "GGUF file not found: /no/such.gguf"),
    (["--set", "data.source=seal-json", "--set", "data.path=/no/such.json"], "data file not found: /no/such.json"),
    (["--set", "self_edit.prompt=implication"], "neither a built-in style"),
    (["--config", "/no/such.yaml"], "config file not found"),
    (["--resume", "/tmp"], "not a run directory"),
    (["--set", "reward.metric=judge"], "reward.metric 'judge' needs judge.base_url"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--set", f"runs_dir={tmp_path}", *args]
                           if "--resume" not in args else ["knowledge", "restem", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # a run that cannot start leaves no directory behind


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert configs
    for path in configs:
        assert path.read_text().startswith("# seal "), f"{path} must start with the command that runs it"
        load_config(path)


def test_evaluate_with_a_local_teacher_model(tiny_config, tiny_dir):
    result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *overrides(tiny_config),
                                 "--set", f"teacher.model={tiny_dir}", "--set", "eval.base_self_edits=false"])
    assert result.exit_code == 0, result.output
    assert "| passage + teacher self-edits |" in result.output


def test_unknown_target_modules_stop_before_any_work(tiny_config):
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", *overrides(tiny_config),
                                 "--set", "restem.sft.target_modules=[qproj]"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "restem.sft.target_modules: ['qproj'] are not linear layers" in " ".join(result.output.split())
    [run_dir] = list(__import__("pathlib").Path(tiny_config.runs_dir).iterdir())
    assert not (run_dir / "records.jsonl").exists()
