"""seal as a library: the README's example on the tiny model, and the torch-free data modules."""

import subprocess
import sys

import seal
from test_cli import overrides


def test_the_library_runs_a_round_and_builds_the_table(tiny_config):
    config = seal.load_config(None, [a for a in overrides(tiny_config) if a != "--set"])
    run = seal.start(config)
    policy = seal.restem(run)
    assert run.get("round1/done") is not None and policy.model is not None
    table = seal.evaluate(run, policy=run.path)
    conditions = [row["condition"] for row in table.rows]
    assert conditions[0] == "base model, no update" and "passage + SEAL round 1 self-edits" in conditions
    assert (run.path / "table.md").read_text().startswith(table.markdown())
    again = seal.table(seal.resume(run.path))  # from the records alone
    assert [r["reward"] for r in again.rows] == [r["reward"] for r in table.rows]


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
