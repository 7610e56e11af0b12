"""Experiment trackers (logging.backend): a tiny ReST-EM run logged to TensorBoard, read back from its
event files; a resume logs only what it adds; a tracker that is not installed is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import overrides
from seal.cli import app
from seal.core.runs import Run

runner = CliRunner()
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(run: Run) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's TensorBoard event files (all of them: a resume adds a file), by tag."""
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run.path / "tensorboard").glob("events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_a_run_streams_its_records_to_tensorboard_once(tiny_config):
    args = [*overrides(tiny_config), "--set", "logging.backend=tensorboard", "--set", "restem.rounds=1"]
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [path] = list(Path(tiny_config.runs_dir).iterdir())
    run = Run.resume(path)
    logged = scalars(run)

    # Each evaluation's reward at its place among the records, equal to the recorded value.
    lines = [line for line in (path / "records.jsonl").read_text().splitlines() if line.strip()]
    order = {r["key"]: i + 1 for i, r in enumerate(map(__import__("json").loads, lines))}
    evals = run.records("self_edit_eval")
    assert evals
    want = sorted((order[r["key"]], pytest.approx(r["reward"], abs=1e-6)) for r in evals)
    assert sorted(logged["self_edit_eval/reward"]) == want
    trained = [r for r in evals if r.get("train")]
    assert len(logged["self_edit_eval/train/last_loss"]) == len(trained)
    assert len(logged["self_edit_eval/tokens_per_s"]) == len(trained)
    assert len(logged["system/rss_gib"]) == len(lines)  # memory beside every record

    # The round: its M-step's losses, and the learning curve's row of the base model's self-edits.
    done = run.get("round1/done")
    assert logged["round/sft/first_loss"] == [(order["round1/done"], pytest.approx(done["sft"]["first_loss"], abs=1e-5))]
    base_mean = sum(r["reward"] for r in run.records("self_edit_eval") if r["round"] == 1 and "sample" in r)
    base_mean /= len([r for r in run.records("self_edit_eval") if r["round"] == 1 and "sample" in r])
    assert logged["curve/mean"] == [(order["round1/done"], pytest.approx(base_mean, abs=1e-5))]

    # The comparison table: each row's score, at the step after the last record.
    table_tags = [t for t in logged if t.startswith("table/comparison/")]
    assert "table/comparison/passage only" in table_tags, table_tags
    assert all(step == len(lines) for tag in table_tags for step, _ in logged[tag])

    # A resume of the finished run adds no record, so it logs nothing again.
    again = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(path)])
    assert again.exit_code == 0, again.output
    assert scalars(Run.resume(path)) == logged


def test_a_tracker_that_is_not_installed_stops_the_run_before_any_work(tiny_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", *overrides(tiny_config),
                                 "--set", "logging.backend=[tensorboard,wandb]"])
    assert result.exit_code == 2
    assert "logging.backend wandb: the package is not installed (pip install wandb)" in " ".join(result.output.split())
    assert not Path(tiny_config.runs_dir).exists() or not any(Path(tiny_config.runs_dir).iterdir())


def test_none_cannot_be_combined_with_a_tracker(tiny_config):
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", *overrides(tiny_config),
                                 "--set", "logging.backend=none,tensorboard"])
    assert result.exit_code == 2 and "'none' cannot be combined" in result.output


def test_a_run_logs_to_an_mlflow_file_store_and_a_resume_continues_the_same_mlflow_run(tiny_config):
    mlflow = pytest.importorskip("mlflow")
    args = [*overrides(tiny_config), "--set", "logging.backend=mlflow", "--set", "restem.rounds=1"]
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args])
    assert result.exit_code == 0, result.output
    [path] = list(Path(tiny_config.runs_dir).iterdir())
    run = Run.resume(path)
    run_id = (path / "mlflow_run_id").read_text()
    client = mlflow.tracking.MlflowClient(tracking_uri=(path / "mlruns").resolve().as_uri())  # MLFLOW_ALLOW_FILE_STORE set by the run
    history = client.get_metric_history(run_id, "self_edit_eval/reward")
    assert sorted(m.value for m in history) == pytest.approx(sorted(r["reward"] for r in run.records("self_edit_eval")), abs=1e-6)
    again = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(path)])
    assert again.exit_code == 0, again.output
    assert (path / "mlflow_run_id").read_text() == run_id
    assert len(client.get_metric_history(run_id, "self_edit_eval/reward")) == len(history)


def test_a_run_logs_to_wandb_offline_without_network(tiny_config, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = [*overrides(tiny_config), "--set", "logging.backend=wandb", "--set", "restem.rounds=1"]
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *args])
    assert result.exit_code == 0, result.output
    [path] = list(Path(tiny_config.runs_dir).iterdir())
    [offline] = list((path / "wandb").glob("offline-run-*"))  # for `wandb sync` later
    [log] = list(offline.glob("*.wandb"))
    assert log.stat().st_size > 0
