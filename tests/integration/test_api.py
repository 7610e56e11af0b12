"""seal as a library: the README's example on the tiny model, and the torch-free data modules."""

import subprocess
import sys
from pathlib import Path

import pytest

import seal
from helpers import overrides


def test_the_library_runs_a_round_and_builds_the_table(tiny_config):
    import torch

    from seal.core.models import load_model

    # loglik: rewards of the random model that differ from 0 and from each other (its F1 is 0 everywhere)
    config = seal.load_config(None, [a for a in overrides(tiny_config) if a != "--set"] + ["reward.metric=loglik"])
    run = seal.start(config)
    policy = seal.restem(run)
    done = run.get("round1/done")
    # the returned model is round 1's policy: its saved adapter merged into the base weights
    assert done["adapter"] and [Path(p).resolve() for p in policy.policy] == [(run.path / done["adapter"]).resolve()]
    base = load_model(config.model.name, "cpu").model.state_dict()
    changed = [k for k, v in policy.model.state_dict().items() if not torch.equal(v, base[k])]
    assert changed and all("proj" in k for k in changed)
    table = seal.evaluate(run, policy=run.path)
    conditions = [row["condition"] for row in table.rows]
    assert conditions[0] == "base model, no update" and "passage + SEAL round 1 self-edits" in conditions
    rewards = [r["reward"] for r in table.rows]
    assert all(r > 0 for r in rewards) and len(set(rewards)) > 1, rewards
    assert (run.path / "table.md").read_text().startswith(table.markdown())
    again = seal.table(seal.resume(run.path))  # from the records alone
    assert [r["reward"] for r in again.rows] == rewards


def test_the_data_code_needs_no_torch():
    code = ("import sys\n"
            "import seal, seal.arc.grids, seal.arc.tasks, seal.arc.augment, seal.arc.ttt, seal.arc.self_edit\n"
            "import seal.arc.config, seal.knowledge.data, seal.knowledge.self_edit, seal.knowledge.config\n"
            "import seal.core.config, seal.core.token_store\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_library_run_saves_the_task_ids_of_its_task_list_file(tiny_dir, tmp_path):
    listed = tmp_path / "eval.txt"
    listed.write_text("66e6c45b  # the list as it was when the run started\n")
    config = seal.load_config(None, [f"model.name={tiny_dir}", f"runs_dir={tmp_path / 'runs'}",
                                     f"data.eval_ids={listed}", "data.train_ids=[5582e5ca]"], domain="arc")
    run = seal.start(config, "evaluate")
    listed.write_text("66e6c45b\n00576224\n")
    again = seal.resume(run.path)
    assert again.config.data.eval_ids == ["66e6c45b"] and again.config.data.train_ids == ["5582e5ca"]
    assert again.meta["inputs"]["pinned"] == {"data.eval_ids": str(listed), "model.precision": "auto"}


def test_the_library_learns_documents_and_answers_as_the_command_line_does(tiny_config, tmp_path):
    """seal.learn writes the folder `seal ask` loads, its table equals the run's learned.md, and
    seal.ask gives the answer the command line prints."""
    from typer.testing import CliRunner

    from helpers import EXAMPLES, overrides
    from seal.cli import app
    from seal.knowledge.learned import LearnError

    sets = [a for a in overrides(tiny_config) if a != "--set"] + ["learn.k=2", "learn.epochs=1", "learn.rank=4",
                                                                  "learn.alpha=8", "learn.max_passage_tokens=120"]
    learned = seal.learn([EXAMPLES], tmp_path / "learned", overrides=sets)
    assert learned.path == tmp_path / "learned" and (learned.path / "manifest.json").is_file()
    assert learned.documents == 3 and learned.passages >= 3 and not learned.known
    assert (learned.run.path / "learned.md").read_text().strip() == learned.table.markdown().strip()
    with pytest.raises(LearnError, match="exists"):
        seal.learn([EXAMPLES], tmp_path / "learned", overrides=sets)
    question = "Who was the first keeper of the Velmora lighthouse?"
    printed = CliRunner().invoke(app, ["ask", str(learned.path), question])
    assert printed.exit_code == 0, printed.output
    assert seal.ask(learned.path, question) + "    [from " in printed.output  # the same greedy answer
