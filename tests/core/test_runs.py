"""Run directories: records survive kills, torn writes and resumes."""

import json

from seal.core.runs import Run


def test_a_torn_tail_is_cut_before_the_next_record(tiny_config):
    run = Run.create(tiny_config, "restem")
    run.append("x", "a", value=1)
    with open(run.path / "records.jsonl", "a") as f:
        f.write('{"kind": "x", "key": "b", "val')  # killed mid-write
    resumed = Run.resume(run.path)
    assert resumed.get("b") is None and resumed.get("a")["value"] == 1
    resumed.append("x", "c", value=3)
    again = Run.resume(run.path)  # the record written after the resume is still there
    assert again.get("c")["value"] == 3 and again.get("a")["value"] == 1
    lines = (run.path / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "c"]


def test_reading_a_run_never_changes_its_file(tiny_config):
    run = Run.create(tiny_config, "restem")
    run.append("x", "a", value=1)
    with open(run.path / "records.jsonl", "a") as f:
        f.write('{"kind": "x", "key": "b"')  # a writer may still be finishing this line
    before = (run.path / "records.jsonl").read_bytes()
    Run.resume(run.path).records()
    assert (run.path / "records.jsonl").read_bytes() == before


def test_a_record_glued_to_a_torn_line_is_recovered(tiny_config):
    """Files written before the torn tail was cut can hold a record appended to a torn line."""
    run = Run.create(tiny_config, "restem")
    run.append("x", "a", value=1)
    with open(run.path / "records.jsonl", "a") as f:
        f.write('{"kind": "x", "key": "b", "va' + json.dumps({"kind": "x", "key": "c", "value": 3}) + "\n")
    resumed = Run.resume(run.path)
    assert resumed.get("c")["value"] == 3 and resumed.get("b") is None


def test_metadata_is_never_torn_by_a_kill_and_a_change_is_recorded_first(tiny_config, tmp_path):
    """Killed while config.yaml is replaced on a resume's change: the run still loads, with the old
    configuration whole, and the change is on record (the next resume with it completes it)."""
    import os
    import subprocess
    import sys

    run = Run.create(tiny_config, "restem")
    before = (run.path / "config.yaml").read_text()
    assert json.loads((run.path / "meta.json").read_text())["command"] == "restem"
    code = (f"from seal.core.runs import Run\nfrom seal.core.starting import record_change\n"
            f"run = Run.resume({str(run.path)!r})\nconfig = run.config.model_copy(deep=True)\n"
            f"config.inner_loop.adapters_per_batch = 3\n"
            f"record_change(run, config, {{'inner_loop.adapters_per_batch': [None, 3]}})\n")
    env = dict(os.environ, SEAL_CRASH_AT="metadata-write:1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]  # killed at the crash point
    resumed = Run.resume(run.path)
    assert (run.path / "config.yaml").read_text() == before  # the old file, whole
    assert resumed.records("config_change")[0]["changes"] == {"inner_loop.adapters_per_batch": [None, 3]}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)  # the same change again
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert Run.resume(run.path).config.inner_loop.adapters_per_batch == 3


def test_a_new_run_records_the_source_commit_it_ran(tiny_config):
    """meta.json says which commit of seal made the run (provenance), and whether src/ had changes."""
    import subprocess

    from helpers import ROOT

    run = Run.create(tiny_config, "restem")
    meta = json.loads((run.path / "meta.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode:  # not a git checkout: nothing to record
        assert meta["source"] is None
        return
    assert meta["source"]["commit"] == head.stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
    assert meta["source"]["dirty"] == bool(changed)
