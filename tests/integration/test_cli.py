"""The command line end to end on the tiny model: runs, tables, resume, and clear errors."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import ROOT, overrides
from seal.cli import app
from seal.core.config import load_config

runner = CliRunner()


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
    # 2 E-steps (round 1, then the new policy) x 2 passages x (k=2 + the passage alone), then 4 rows x 2 in eval
    assert "self-edit evaluations: 20, wall time mean" in again.output
    assert "round 1: " in again.output and "kept 2 self-edits" in again.output

    resumed = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert len((run_dir / "records.jsonl").read_text().splitlines()) == n_records  # nothing redone


def test_generate_writes_self_edits(tiny_config):
    result = runner.invoke(app, ["knowledge", "generate", "--quiet", "--n", "2", "--split", "eval",
                                 "--set", "self_edit.prompt=self-qa", *overrides(tiny_config)])
    assert result.exit_code == 0, result.output
    [run_dir] = list(__import__("pathlib").Path(tiny_config.runs_dir).iterdir())
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
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
    (["--set", "eval.more_prompts=[rewrite, implicatons]"], "self_edit.prompt 'implicatons' is neither a built-in style"),
    (["--workers", "2", "--set", "distributed.address=127.0.0.1:1"], "distributed.address '127.0.0.1:1': no Ray cluster answers"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--set", f"runs_dir={tmp_path}", *args]
                           if "--resume" not in args else ["knowledge", "restem", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # a run that cannot start leaves no directory behind


def test_every_shipped_config_loads():

    from seal.arc.tasks import task_ids

    configs = sorted(ROOT.glob("configs/*.yaml"))
    assert configs
    for path in configs:
        assert path.read_text().startswith("# seal "), f"{path} must start with the command that runs it"
        cfg = load_config(path)
        for field in ("train_ids", "eval_ids"):  # a task-list file named from the repository's root is there
            named = getattr(cfg.data, field, None)
            if isinstance(named, str):
                assert task_ids(str(path.parents[1] / named), field), f"{path}: data.{field}"


def test_evaluate_with_a_local_teacher_model(tiny_config, tiny_dir):
    result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *overrides(tiny_config),
                                 "--set", f"teacher.model={tiny_dir}", "--set", "eval.base_self_edits=false"])
    assert result.exit_code == 0, result.output
    assert "| passage + teacher self-edits |" in result.output


@pytest.mark.parametrize("command, args, message", [
    ("restem", ["--set", "restem.sft.target_modules=[qproj]"], "restem.sft.target_modules: ['qproj'] are not linear layers"),
    ("cpt", ["--set", "cpt.target_modules=[qproj]"], "cpt.target_modules: ['qproj'] are not linear layers"),
    ("continual", ["--set", "continual.steps=5"], "continual.steps=5 needs at least that many passages"),
    ("cpt", ["--set", "data.eval_passages=0"], "no passages: set data.eval_passages"),
    ("evaluate", ["--policy", "/tmp"], "not a run directory"),
])
def test_every_check_runs_before_the_run_directory_exists(tiny_config, command, args, message):
    result = runner.invoke(app, ["knowledge", command, "--quiet", *overrides(tiny_config), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in " ".join(result.output.split())
    assert not Path(tiny_config.runs_dir).exists() or not any(Path(tiny_config.runs_dir).iterdir())


def test_a_policy_is_checked_against_the_model_and_the_scored_passages(tiny_config):
    from seal.core.config import ConfigError
    from seal.core.starting import check_policy
    from seal.knowledge.plugin import PLUGIN

    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *overrides(tiny_config)]).exit_code == 0
    [policy] = list(Path(tiny_config.runs_dir).iterdir())
    # every passage held out: the policy's two training passages are among them
    result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *overrides(tiny_config), "--policy", str(policy),
                                 "--set", "data.train_passages=0", "--set", "data.eval_passages=24",
                                 "--set", "data.split_by_article=false"])
    assert result.exit_code == 2, result.output
    assert "2 of the 24 passages scored here were in its training set, 2 share an article" in " ".join(result.output.split())
    assert "--allow-overlap" in result.output and list(Path(tiny_config.runs_dir).iterdir()) == [policy]
    cfg = tiny_config.model_copy(deep=True)
    cfg.data.train_passages, cfg.data.eval_passages, cfg.data.split_by_article = 0, 24, False
    _, held = PLUGIN.contexts(cfg)
    domain = PLUGIN.domain(cfg)
    check_policy(PLUGIN, domain, cfg, policy, held, allow_overlap=True)  # allowed: no error
    _, own_held = PLUGIN.contexts(tiny_config)
    check_policy(PLUGIN, domain, tiny_config, policy, own_held, allow_overlap=False)  # its own held-out split: fine
    cfg.model.name = "embedded"
    with pytest.raises(ConfigError, match="trained from model"):
        check_policy(PLUGIN, domain, cfg, policy, held, allow_overlap=True)


def test_several_prompt_styles_in_one_table(tiny_config):
    result = runner.invoke(app, ["knowledge", "evaluate", "--quiet", *overrides(tiny_config),
                                 "--set", "eval.more_prompts=[rewrite, self-qa]"])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    from seal.core.runs import Run
    from seal.knowledge.evaluate import table

    run = Run.resume(run_dir)
    names = [row["condition"] for row in table(run).rows]
    assert names[4:] == ["passage + base self-edits", "passage + base self-edits (rewrite)",
                         "passage + base self-edits (self-qa)"]
    prompts = {r["condition"]: r["prompt"] for r in run.records("samples")}
    assert "Rewrite this passage" in prompts["passage + base self-edits (rewrite)"]
    assert "question-answer pairs" in prompts["passage + base self-edits (self-qa)"]
    assert "implications" in prompts["passage + base self-edits"]


def test_a_resume_keeps_no_eval_unless_told_otherwise(tiny_config):
    def eval_records(run_dir):
        lines = (run_dir / "records.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["key"].startswith("eval/")]

    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *overrides(tiny_config)]).exit_code == 0
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    assert json.loads((run_dir / "meta.json").read_text())["inputs"]["flags"] == {"eval": False}
    resumed = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert eval_records(run_dir) == [] and not (run_dir / "table.md").exists()

    # a run from before the flags were recorded: its command line says --no-eval
    meta = json.loads((run_dir / "meta.json").read_text())
    del meta["inputs"]["flags"]
    meta["argv"] = ["seal", "knowledge", "restem", "--no-eval"]
    (run_dir / "meta.json").write_text(json.dumps(meta))
    assert runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(run_dir)]).exit_code == 0
    assert eval_records(run_dir) == []

    told = runner.invoke(app, ["knowledge", "restem", "--quiet", "--eval", "--resume", str(run_dir)])
    assert told.exit_code == 0, told.output
    assert eval_records(run_dir) and "passage + SEAL round 1 self-edits" in (run_dir / "table.md").read_text()


KNOWLEDGE_COMMANDS = ["generate", "restem", "evaluate", "cpt", "continual", "learn"]


@pytest.mark.parametrize("command", KNOWLEDGE_COMMANDS)
def test_every_command_farms_out_to_workers_or_refuses_them(tiny_config, command):
    """`distributed.workers: 1` is honoured by the commands that send work to Ray workers and refused
    in one line, before any work, by every command that runs in its own process only."""
    from seal.core.config import ConfigError
    from seal.core.starting import check_run
    from seal.knowledge.plugin import PLUGIN

    config = tiny_config.model_copy(update=dict(distributed=tiny_config.distributed.model_copy(update=dict(workers=1))))
    if command in ("restem", "evaluate"):
        assert command in PLUGIN.distributes
        check_run(PLUGIN, command, config)  # accepted: these load the model through load_run_model
    else:
        with pytest.raises(ConfigError, match=rf"distributed.workers 1: `seal knowledge {command}` runs in this process only"):
            check_run(PLUGIN, command, config)


def test_the_library_api_attaches_workers_as_the_command_line_does(monkeypatch, tiny_config):
    import seal.api
    import seal.core.distributed as distributed

    seen = []
    def stop(config, log=print):
        seen.append(config)
        raise RuntimeError("stop")

    monkeypatch.setattr(distributed, "load_run_model", stop)
    run = seal.api.start(tiny_config)
    with pytest.raises(RuntimeError, match="stop"):
        seal.api.restem(run)
    assert seen and seen[0].distributed == tiny_config.distributed


def test_a_worker_count_on_a_local_command_is_one_line_and_no_run_directory(tiny_config):
    result = runner.invoke(app, ["knowledge", "cpt", "--quiet", *overrides(tiny_config), "--set", "distributed.workers=1"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "runs in this process only" in " ".join(result.output.split())
    assert not Path(tiny_config.runs_dir).exists() or not any(Path(tiny_config.runs_dir).iterdir())


def test_settings_a_command_does_not_read_are_named(tiny_config):
    from seal.core.starting import unread_settings
    from seal.knowledge.plugin import PLUGIN

    config = load_config(None, [f"model.name={tiny_config.model.name}", "restem.k=3", "eval.bootstrap=300",
                                "cpt.epochs=2", "inner_loop.lr=0.01"])
    assert unread_settings(PLUGIN, "cpt", config) == ["eval.bootstrap", "restem.k"]
    assert unread_settings(PLUGIN, "restem", config) == ["cpt.epochs"]
    assert unread_settings(PLUGIN, "restem", config, ("eval",)) == ["cpt.epochs", "eval.bootstrap"]  # --no-eval
    assert unread_settings(PLUGIN, "evaluate", load_config(None, ["inner_loop.lr=0.01"])) == []
    result = runner.invoke(app, ["knowledge", "restem", "--no-eval", "--quiet", *overrides(tiny_config),
                                 "--set", "restem.rounds=0", "--set", "cpt.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "does not read cpt.epochs, eval.bootstrap" in " ".join(result.output.split())
