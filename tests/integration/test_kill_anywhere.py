"""Kill a command anywhere, resume it until it finishes, and get the records of an uninterrupted run.

Each command runs in a subprocess on the tiny model. It is killed with SIGKILL several times at seeded
moments: right after its n-th record, half-way through writing a record, while an adapter (the
policy, a CPT update, a continual step) is being saved, and at a random time from outside. After
each kill it is resumed (`--resume RUN_DIR`) until it completes. The final records must equal those of
an uninterrupted run with the same seed: the same keys, no key written twice, the same self-edits and
the same rewards to 1e-6. The cases run two at a time (each a chain of single-threaded subprocesses).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config_at
from helpers import arc_args, overrides
from seal.core.runs import Run

pytestmark = pytest.mark.slow  # subprocess chains: about 2 minutes; `make test-fast` leaves them out

CLI = [sys.executable, "-m", "seal.cli"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def knowledge_args(tiny_dir, runs: Path, *extra: str) -> list[str]:
    args = overrides(tiny_config_at(tiny_dir, runs))
    # loglik rewards are continuous: a different batching after a kill moves them by ~1e-7, never more
    sets = ["reward.metric=loglik", "inner_loop.adapters_per_batch=3", *extra]
    return args + [a for s in sets for a in ("--set", s)]


COMMANDS = {
    "knowledge restem, 2 rounds": lambda d, runs: ["knowledge", "restem", *knowledge_args(d, runs, "restem.rounds=2")],
    "knowledge restem, distill, 2 rounds": lambda d, runs: ["knowledge", "restem", *knowledge_args(
        d, runs, "restem.rounds=2", "inner_loop.objective=distill", "restem.coverage_bonus=0.05")],
    "arc restem": lambda d, runs: ["arc", "restem", *arc_args(d, runs.parent, "inner_loop.adapters_per_batch=2")],
    "knowledge evaluate, lm and distill": lambda d, runs: ["knowledge", "evaluate", *knowledge_args(
        d, runs, "eval.objectives=[lm, distill]", "eval.base_self_edits=false")],
    "knowledge cpt": lambda d, runs: ["knowledge", "cpt", *knowledge_args(d, runs, "data.eval_passages=3")],
    "knowledge continual": lambda d, runs: ["knowledge", "continual", *knowledge_args(
        d, runs, "data.eval_passages=3", "continual.steps=2", "continual.remedies=[none, replay]")],
}


def start(args: list[str], crash: str | None = None, kill_after: float | None = None) -> int:
    env = dict(ENV, SEAL_CRASH_AT=crash) if crash else ENV
    proc = subprocess.Popen(CLI + args + ["--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return proc.returncode


def record_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def comparable(record: dict) -> dict:
    """What must not depend on interruptions: texts, rewards, which self-edits were kept."""
    out = {}
    for field in ("self_edits", "answers", "kept", "adapter", "valid", "problem", "sequences"):
        if field in record:
            out[field] = [(k["context_id"], k["sample"], round(k["reward"], 5)) for k in record[field]] \
                if field == "kept" else record[field]
    if record.get("reward") is not None:
        out["reward"] = record["reward"]
    if "scores" in record:  # a continual step
        out["scores"] = [(s["passage_id"], s["reward"]) for s in record["scores"]]
    return out


def assert_same(reference: list[dict], resumed: list[dict]) -> None:
    keys = [r["key"] for r in resumed]
    assert len(keys) == len(set(keys)), "a record was written twice"
    ref, got = {r["key"]: comparable(r) for r in reference}, {r["key"]: comparable(r) for r in resumed}
    assert set(got) == set(ref)
    for key, expected in ref.items():
        actual = got[key]
        for field, value in expected.items():
            if field == "reward":
                assert actual[field] == pytest.approx(value, abs=1e-6), key
            elif field == "scores":
                assert [p for p, _ in actual[field]] == [p for p, _ in value], key
                assert [r for _, r in actual[field]] == pytest.approx([r for _, r in value], abs=1e-6), key
            else:
                assert actual[field] == value, (key, field)


def killed_and_resumed(name: str, tiny_dir, root: Path) -> tuple[list[dict], list[dict], int]:
    """One case: the uninterrupted run's records, the killed-and-resumed run's, and how many kills."""
    rng = random.Random(f"kill/{name}")
    reference_runs, killed_runs = root / "reference" / "runs", root / "killed" / "runs"
    assert start(COMMANDS[name](tiny_dir, reference_runs)) == 0
    [reference_dir] = list(reference_runs.iterdir())
    reference = record_lines(reference_dir)

    args = COMMANDS[name](tiny_dir, killed_runs)
    kills = 0
    first = "teacher-save" if "distill" in name else "adapter-save"  # a table saves no adapter
    for kind in (first, "record", "record-write", "time", "record"):
        run_dirs = list(killed_runs.iterdir()) if killed_runs.exists() else []
        attempt = args if not run_dirs else [*args[:2], "--resume", str(run_dirs[0])]
        done = len(Run.resume(run_dirs[0]).records()) if run_dirs else 0
        left = max(1, len(reference) - done)
        if kind == "time":
            code = start(attempt, kill_after=rng.uniform(2.0, 6.0))
        else:
            n = 1 if kind.endswith("-save") else rng.randint(1, max(1, left // 2))  # leave work for the next kill
            code = start(attempt, crash=f"{kind}:{n}")
        kills += code != 0
        if code == 0:
            break
    run_dirs = list(killed_runs.iterdir())
    assert len(run_dirs) == 1  # resumed every time, never a second run
    while start([*args[:2], "--resume", str(run_dirs[0])]) != 0:
        pass
    return reference, record_lines(run_dirs[0]), kills


@pytest.fixture(scope="module")
def outcomes(tiny_dir, tmp_path_factory):
    """Every case, two at a time: each is a chain of single-threaded subprocesses, so two chains keep
    two cores busy (the cases are independent; each has its own directories and seeds)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("kill-anywhere")
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(killed_and_resumed, name, tiny_dir, root / f"case{i}")
                   for i, name in enumerate(COMMANDS)}
        return {name: future.exception() or future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_killed_anywhere_and_resumed_equals_uninterrupted(name, outcomes):
    outcome = outcomes[name]
    if isinstance(outcome, BaseException):
        raise outcome
    reference, resumed, kills = outcome
    assert kills >= 3
    assert_same(reference, resumed)
