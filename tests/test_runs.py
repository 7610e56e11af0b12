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
