"""The inner loop on Ray workers (core/distributed.py): a local Ray instance with 2 workers, each loading
the tiny model itself, must record what one process records, and a worker that dies mid-batch must
have its batch sent again."""

import json
import os
import sys
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from helpers import overrides
from seal.cli import app
from seal.core.distributed import Workers, load_run_model
from seal.core.restem import EvalJob, evaluate_jobs
from seal.core.runs import Run
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain

pytestmark = pytest.mark.slow  # a local Ray cluster per test; `make test-fast` leaves them out

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module (starting one takes seconds); this module's classes travel
    to the workers by value, since the workers cannot import a test module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def what(record):
    """A record without its timings: what was computed."""
    if isinstance(record, dict):
        return {k: what(v) for k, v in record.items() if k not in ("time", "batch") and not k.endswith("seconds")}
    if isinstance(record, list):
        return [what(v) for v in record]
    return record


def by_key(run_dir: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    return {r["key"]: what(r) for r in records}


def test_a_distributed_run_records_what_one_process_records(tiny_config, tmp_path):
    """ReST-EM (sampling, pre-update scores, evaluations, M-step) and its table: 2 workers and one process
    give the same records, key by key. The workers follow the driver's policy: the base model, round 1's
    policy, the base model again for the table's first rows, then round 1's for its SEAL rows."""
    runs = {}
    for name, extra in [("local", []), ("workers", ["--workers", "2"])]:
        args = [a.replace(str(tiny_config.runs_dir), str(tmp_path / name)) for a in overrides(tiny_config)]
        result = runner.invoke(app, ["knowledge", "restem", "--quiet", *args, "--set", "inner_loop.adapters_per_batch=2", *extra])
        assert result.exit_code == 0, result.output
        [runs[name]] = list((tmp_path / name).iterdir())
    local, distributed = by_key(runs["local"]), by_key(runs["workers"])
    assert sorted(local) == sorted(distributed)
    differ = [key for key in local if local[key] != distributed[key]]
    assert not differ, (differ[:3], local[differ[0]], distributed[differ[0]])
    assert any(k.startswith("round2/eval/") for k in local) and any(k.startswith("eval/eval/") for k in local)

    # the run says how it was scheduled, and --resume may change that: nothing is redone in one process
    n = len(distributed)
    resumed = runner.invoke(app, ["knowledge", "restem", "--quiet", "--resume", str(runs["workers"]), "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert len(by_key(runs["workers"])) == n + 1  # only the recorded change of settings
    assert "distributed.workers" in json.dumps(Run.resume(runs["workers"]).records("config_change"))


def test_workers_that_cannot_start_are_one_clear_error(tiny_config):
    """An actor that cannot be placed would wait forever: refused before any starts; one that cannot
    load the model says so."""
    from seal.core.distributed import WorkerError

    cfg = tiny_config.model_copy(deep=True)
    cfg.distributed.workers = 5  # the module's Ray instance has 2 CPUs
    with pytest.raises(WorkerError, match=r"distributed.workers 5 x 1 CPU each: the Ray cluster has \d+ CPU free of 2"):
        load_run_model(cfg)
    cfg.distributed.workers, cfg.distributed.gpus_per_worker = 1, 1
    with pytest.raises(WorkerError, match="1 x 1 GPU each: the Ray cluster has 0 GPU free of 0"):
        load_run_model(cfg)
    cfg.distributed.gpus_per_worker = 0
    cfg.model.name = str(tiny_config.runs_dir)  # not a model: the worker fails to load it
    with pytest.raises(WorkerError, match="a distributed worker could not load model"):
        load_run_model(cfg)


class DyingDomain(KnowledgeDomain):
    """The first batch any worker takes kills that worker's process (a crash, an out-of-memory kill)."""

    def __init__(self, config, marker: Path):
        super().__init__(config)
        self.marker = marker

    def evaluate_batch(self, lm, items):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().evaluate_batch(lm, items)


def test_a_worker_that_dies_has_its_batch_sent_again(tiny_config, tmp_path):
    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.adapters_per_batch = 2
    passage = load_builtin()[0]
    jobs = lambda: [EvalJob(f"e/{i}", passage, f"Fact number {i} about it.", dict(reward=0.0), ("e", i)) for i in range(6)]
    cfg.distributed.workers = 2
    lm = load_run_model(cfg)
    assert isinstance(lm.workers, Workers) and lm.workers.size == 2
    marker = tmp_path / "died"
    run = Run.create(cfg, "restem")
    evaluate_jobs(run, lm, DyingDomain(cfg, marker), jobs())
    pids = {info["pid"] for info in ray.get([a.ready.remote() for a in lm.workers.actors])}
    assert marker.exists() and int(marker.read_text()) not in pids  # a worker died, and was replaced
    assert len(run.records("self_edit_eval")) == 6  # its batch was evaluated all the same

    cfg.distributed.workers = 0
    alone = Run.create(cfg, "restem")
    evaluate_jobs(alone, load_run_model(cfg), KnowledgeDomain(cfg), jobs())
    assert {r["key"]: what(r) for r in run.records()} == {r["key"]: what(r) for r in alone.records()}


def test_the_driver_reads_the_weights_only_for_the_m_step(tiny_config, monkeypatch):
    """With workers, the driver's model is a DeferredModel: sampling, scores and evaluations go to the
    workers and leave it unread; the M-step reads and trains it, and drops it once the policy's adapter
    is saved; the table goes back to the base model and only lists the adapter for the workers."""
    import seal
    import seal.core.restem as restem_module
    from seal.core.models import DeferredModel
    from seal.core.restem import reset_to_base

    config = seal.load_config(None, [a for a in overrides(tiny_config) if a != "--set"] + ["restem.rounds=1"])
    config.distributed.workers = 2
    run = seal.start(config)
    lm = load_run_model(config)
    assert isinstance(lm, DeferredModel) and not lm.loaded and "loaded=False" in repr(lm)
    at_m_step, real = [], restem_module.sft_and_merge
    monkeypatch.setattr(restem_module, "sft_and_merge", lambda m, *a, **k: at_m_step.append(m.loaded) or real(m, *a, **k))
    seal.restem(run, lm)
    adapter = str((run.path / "policy/round-1").resolve())
    assert at_m_step == [False] and not lm.loaded and lm.policy == [adapter]  # dropped again after the M-step
    assert lm.model is not None and lm.loaded and lm.policy == [adapter]  # read again: the policy merged
    reset_to_base(lm)  # as `seal knowledge restem` does before its table: the first rows are the base model's
    assert not lm.loaded and lm.policy == []
    table = seal.evaluate(run, policy=run.path, lm=lm)
    assert not lm.loaded and lm.policy == [adapter]  # round 1's policy, for the workers to merge
    assert "passage + SEAL round 1 self-edits" in [r["condition"] for r in table.rows]


def test_a_deferred_model_merges_the_listed_adapters_when_read(tiny_dir, tmp_path):
    """Adapters merged into a DeferredModel before its weights are read are merged when they are, in
    order: the same weights as an eager model that merged them one by one."""
    import torch

    from seal.core.config import LoraTrainConfig
    from seal.core.models import DeferredModel, load_model, merge_saved_adapter
    from seal.core.restem import reset_to_base
    from seal.core.training import Example, sft_and_merge

    trainer = load_model(str(tiny_dir), "cpu")
    cfg = LoraTrainConfig(rank=2, alpha=4, lr=1e-2, epochs=1)
    folders = []
    for i in range(2):
        folders.append(tmp_path / f"a{i}")
        ids = list(range(3 + i, 9 + i))
        sft_and_merge(trainer, [Example(ids, [-100, -100, *ids[2:]])], cfg, seed=i, precision="fp32", save_dir=folders[-1])
    eager, deferred = load_model(str(tiny_dir), "cpu"), DeferredModel(str(tiny_dir), "cpu")
    for folder in folders:
        merge_saved_adapter(eager, folder)
        merge_saved_adapter(deferred, folder)
    assert not deferred.loaded and deferred.policy == [str(f.resolve()) for f in folders]
    want, got = eager.model.state_dict(), deferred.model.state_dict()
    assert deferred.loaded and deferred.policy == eager.policy
    assert all(torch.equal(want[k], got[k]) for k in want)
    reset_to_base(deferred)
    assert not deferred.loaded and deferred.policy == []
    base = load_model(str(tiny_dir), "cpu").model.state_dict()
    assert all(torch.equal(base[k], v) for k, v in deferred.model.state_dict().items())
    assert any(not torch.equal(base[k], want[k]) for k in want)  # the adapters did change the weights
