import contextlib
import json
import re

import pytest
import torch

from seal.core.models import load_model
from seal.core.progress import Progress
from seal.core.restem import restem
from seal.core.runs import Run
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain


class CountingDomain(KnowledgeDomain):
    """Counts inner-loop evaluations, and can be made to fail after n of them (a simulated kill)."""

    def __init__(self, config, fail_after=None):
        super().__init__(config)
        self.calls, self.fail_after = 0, fail_after

    def _count(self, n):
        if self.fail_after is not None and self.calls + n > self.fail_after:
            raise KeyboardInterrupt
        self.calls += n

    def evaluate(self, *args, **kwargs):
        self._count(1)
        return super().evaluate(*args, **kwargs)

    def evaluate_batch(self, lm, items):
        self._count(len(items))
        return super().evaluate_batch(lm, items)


def test_full_round_trains_and_merges_the_policy(tiny_config):
    run = Run.create(tiny_config, "restem")
    lm = load_model(tiny_config.model.name, "cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    domain = CountingDomain(tiny_config)
    contexts = load_builtin()[:2]
    with Progress(enabled=False) as progress:
        restem(run, lm, domain, contexts, progress)
    # round 1's E-step, then the new policy's own evaluation; each: k self-edits and the passage alone per context
    assert domain.calls == 2 * len(contexts) * (tiny_config.restem.k + 1)
    [done] = run.records("round")
    assert len(done["kept"]) == 2 and done["adapter"] == "policy/round-1"
    assert (run.path / "policy/round-1/adapter_config.json").is_file()
    assert any(not torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    evals = [r for r in run.records("self_edit_eval") if "/eval/" in r["key"]]
    assert {r["sample"] for r in evals} == {0, 1} and all(("self_edit" in r and "train" in r) or not r["valid"] for r in evals)
    # every record is on disk, one JSON object a line
    lines = (run.path / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(run.records()) and all(json.loads(line)["key"] for line in lines)


def test_require_improvement_can_keep_nothing(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.reward.require_improvement = True
    cfg.inner_loop.lr = 1e-9  # updates too small to beat the pre-update score
    cfg.reward.metric = "em"
    run = Run.create(cfg, "restem")
    lm = load_model(cfg.model.name, "cpu")
    with Progress(enabled=False) as progress:
        restem(run, lm, KnowledgeDomain(cfg), load_builtin()[:1], progress)
    [done] = run.records("round")
    assert done["kept"] == [] and done["adapter"] is None


@pytest.mark.parametrize("batched", [False, True])
def test_resume_redoes_nothing_that_finished(tiny_config, batched):
    tiny_config = tiny_config.model_copy(deep=True)
    tiny_config.inner_loop.batched = batched
    tiny_config.inner_loop.adapters_per_batch = 3  # batched: a batch of 3 finishes, the next is killed
    contexts = load_builtin()[:2]
    run = Run.create(tiny_config, "restem")
    lm = load_model(tiny_config.model.name, "cpu")
    domain = CountingDomain(tiny_config, fail_after=3)
    with Progress(enabled=False) as progress, contextlib.suppress(KeyboardInterrupt):
        restem(run, lm, domain, contexts, progress)
    assert len(Run.resume(run.path).records("self_edit_eval")) == 3
    # a torn last line (killed mid-write) is ignored and redone
    with open(run.path / "records.jsonl", "a") as f:
        f.write('{"kind": "self_edit_ev')

    resumed = Run.resume(run.path)
    lm2 = load_model(tiny_config.model.name, "cpu")
    domain2 = CountingDomain(resumed.config)
    with Progress(enabled=False) as progress:
        restem(resumed, lm2, domain2, contexts, progress)
    assert domain2.calls == 2 * 2 * 3 - 3  # all but the 3 that finished (2 E-steps x 2 contexts x (k + passage))

    # the same policy as an uninterrupted run with the same seed
    fresh = Run.create(tiny_config, "restem")
    lm3 = load_model(tiny_config.model.name, "cpu")
    with Progress(enabled=False) as progress:
        restem(fresh, lm3, CountingDomain(tiny_config), contexts, progress)
    assert [r["reward"] for r in sorted(fresh.records("self_edit_eval"), key=lambda r: r["key"])] == \
        [r["reward"] for r in sorted(resumed.records("self_edit_eval"), key=lambda r: r["key"])]
    s2, s3 = lm2.model.state_dict(), lm3.model.state_dict()
    assert all(torch.allclose(s2[k], s3[k]) for k in s2)

    # resuming a finished run re-applies the saved policy adapter without training again
    lm4 = load_model(tiny_config.model.name, "cpu")
    domain4 = CountingDomain(tiny_config)
    with Progress(enabled=False) as progress:
        restem(Run.resume(fresh.path), lm4, domain4, contexts, progress)
    assert domain4.calls == 0
    s4 = lm4.model.state_dict()
    assert all(torch.allclose(s3[k], s4[k], atol=1e-6) for k in s3)


def test_runs_never_overwrite(tiny_config):
    a, b = Run.create(tiny_config, "restem"), Run.create(tiny_config, "restem")
    assert a.path != b.path and a.path.exists() and b.path.exists()
    meta = json.loads((a.path / "meta.json").read_text())
    assert meta["seed"] == tiny_config.seed and "torch" in meta["versions"]


class ClockedDomain(KnowledgeDomain):
    """Every evaluation advances a fake clock by `per_eval` seconds, so that batch sizes follow from the
    time a batch takes exactly, whatever this machine's speed."""

    def __init__(self, config, per_eval):
        super().__init__(config)
        self.per_eval, self.now = per_eval, 0.0

    def evaluate_batch(self, lm, items):
        self.now += self.per_eval * len(items)
        return super().evaluate_batch(lm, items)


@pytest.mark.parametrize("max_seconds, expected", [
    (1.5, [4] * 4 + [6] * 6 + [3] * 3),  # 0.25 s each: after the first batch, 1.5 s holds 6
    (0.5, [4] * 4 + [4] * 8 + [1]),  # 0.5 s holds 2, but time narrows a batch only to FIRST_BATCH
])
def test_a_batch_holds_about_max_batch_seconds_of_work(tiny_config, monkeypatch, max_seconds, expected):
    """A kill loses at most the batch in flight: K is sized by the measured time per evaluation, between
    FIRST_BATCH (narrower loses throughput) and the device's throughput K."""
    import types

    from seal.core import bank_size
    from seal.core import restem as restem_module
    from seal.core.restem import EvalJob, evaluate_jobs

    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.max_batch_seconds = max_seconds
    run = Run.create(cfg, "restem")
    lm = load_model(cfg.model.name, "cpu")
    domain = ClockedDomain(cfg, per_eval=0.25)
    monkeypatch.setattr(restem_module, "time", types.SimpleNamespace(perf_counter=lambda: domain.now))
    monkeypatch.setattr(bank_size, "CPU_K", 16)  # as wide as a GPU would allow
    monkeypatch.setattr(bank_size, "memory_adapters", lambda *args: 16)
    passage = load_builtin()[0]
    pre = domain.pre_update(lm, passage)
    jobs = [EvalJob(f"e/{i}", passage, "It was built long ago.", pre, ("e", i)) for i in range(13)]
    evaluate_jobs(run, lm, domain, jobs)
    assert [r["batch"] for r in run.records("self_edit_eval")] == expected


@pytest.mark.parametrize("common", [True, False])
def test_common_seeds_make_equal_texts_equal_rewards(tiny_config, common):
    """With common random numbers, the self-edits of one context train from one initialisation and
    data order per repeat: equal texts get equal adapters and rewards, so rewards differ by text alone."""
    from seal.core.restem import EvalJob, evaluate_jobs

    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.common_seeds, cfg.inner_loop.eval_times, cfg.reward.metric = common, 2, "loglik"
    run = Run.create(cfg, "restem")
    lm = load_model(cfg.model.name, "cpu")
    domain = KnowledgeDomain(cfg)
    passage = load_builtin()[0]
    pre = domain.pre_update(lm, passage)
    text = "It was built long ago.\nIt is famous for its light."
    jobs = [EvalJob(f"e/{i}", passage, text, pre, ("e", passage.id, i), common_parts=("e", passage.id))
            for i in range(2)]
    out = evaluate_jobs(run, lm, domain, jobs)
    a, b = out["e/0"], out["e/1"]
    assert [r["seed"] for r in a] != [r["seed"] for r in b] or common
    assert a[0]["seed"] != a[1]["seed"]  # the repeats still differ
    if common:
        assert [r["seed"] for r in a] == [r["seed"] for r in b]
        assert [r["reward"] for r in a] == pytest.approx([r["reward"] for r in b], abs=1e-7)
    else:
        assert [r["reward"] for r in a] != [r["reward"] for r in b]


def test_a_batch_in_flight_logs_its_training_steps(tiny_config, tmp_path):
    """An inner-loop batch can train for an hour: its steps show in the log while it runs, and the hook
    is gone after the phase."""
    from seal.core.restem import EvalJob, evaluate_jobs

    cfg = tiny_config.model_copy(deep=True)
    cfg.inner_loop.epochs, cfg.inner_loop.adapters_per_batch = 2, 2
    run = Run.create(cfg, "restem")
    lm = load_model(cfg.model.name, "cpu")
    domain = KnowledgeDomain(cfg)
    passage = load_builtin()[0]
    pre = domain.pre_update(lm, passage)
    jobs = [EvalJob(f"e/{i}", passage, "It was built long ago.\nIt is famous.", pre, ("e", i)) for i in range(3)]
    log = tmp_path / "progress.log"
    with Progress(enabled=True, log=log, interval=0) as progress:
        progress.start("evals", "self-edit evaluations", 3)
        evaluate_jobs(run, lm, domain, jobs, progress)
    lines = log.read_text().splitlines()
    steps = [re.search(r"inner-loop batch in flight: training steps: (\d+)/(\d+)", line) for line in lines]
    # two batches (2 + 1 adapters), each logged from 0 to all of its steps while it trains, and done
    # before its evaluations are counted
    assert sum(1 for m in steps if m and m[1] == "0") == 2
    done = [i for i, m in enumerate(steps) if m and m[1] == m[2]]
    assert len(done) == 2
    assert done[0] < next(i for i, line in enumerate(lines) if "self-edit evaluations: 2/3" in line) < done[1]
    assert lm.on_train_step is None
