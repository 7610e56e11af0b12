"""The plug-in contract, executable: a whole domain written here through the public interface only
(core/domain.py's Domain and DomainPlugin, the core's configuration sections), registered by name, and
run by the core's own commands and library API: ReST-EM rounds, the comparison table, resume.

The toy domain: a context is one invented fact ("Topic: Velmora. The lighthouse keeper was Ada."); a
self-edit is the model's restatement of it; the update trains on the self-edit (or, with no
self-edit, the fact itself); the score is how likely the updated model makes the fact's second
sentence after its topic line, closed-book (exp of the mean token log-probability).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from typer.testing import CliRunner

import seal
from seal.core.config import InnerLoopBase, RestemConfig, RewardBase, RunConfig, SamplingBase, Section
from seal.core.domain import Domain, DomainPlugin
from seal.core.generation import completion_logprobs, resolve_precision
from seal.core.inner_loop import Update
from seal.core.tables import Column, Table
from seal.core.training import lm_examples

FACTS = [("Velmora", "The lighthouse keeper was Ada."), ("Orrin", "The bridge has nine arches."),
         ("Tessaly", "The market opens at dawn."), ("Quillon", "The river freezes in March.")]


@dataclass(frozen=True)
class Fact:
    topic: str
    text: str

    @property
    def id(self) -> str:
        return self.topic.lower()


class ToyData(Section):
    train: int = Field(2, ge=1, le=len(FACTS), description="facts ReST-EM learns from; the rest are held out")


class ToyConfig(RunConfig):
    domain: Literal["toy"] = Field("toy", description="the experiment this configuration is for")
    data: ToyData = Field(default_factory=ToyData)
    self_edit: SamplingBase = Field(default_factory=SamplingBase)
    inner_loop: InnerLoopBase = Field(default_factory=InnerLoopBase)
    reward: RewardBase = Field(default_factory=RewardBase)
    restem: RestemConfig = Field(default_factory=RestemConfig)


class ToyDomain(Domain):
    name = "toy"
    batched = True  # its updates can train together in one adapter bank: the core does it

    def __init__(self, config: ToyConfig):
        self.config = config

    def context_id(self, fact: Fact) -> str:
        return fact.id

    def self_edit_prompt(self, fact: Fact) -> str:
        return f"Say it again in other words: Topic: {fact.topic}. {fact.text}\n"

    def score(self, lm, facts: list[Fact], adapters: list[int] | None = None) -> list[dict]:
        precision = resolve_precision(self.config.model.precision, lm.device)
        logps = completion_logprobs(lm, [f"Topic: {f.topic}." for f in facts], [f.text for f in facts],
                                    precision=precision, adapter_rows=adapters)
        return [dict(reward=math.exp(lp), logp=lp) for lp in logps]

    def pre_update(self, lm, fact: Fact) -> dict:
        return self.score(lm, [fact])[0]

    def prepare(self, lm, fact: Fact, self_edit: str | None, seed: int, pre: dict) -> Update:
        text = f"Topic: {fact.topic}. {self_edit if self_edit is not None else fact.text}"
        if self_edit is not None and not self_edit.strip():  # model output never crashes a run
            return Update(dict(fact=fact.id, valid=False, problem="empty self-edit", reward=0.0))
        return Update(dict(fact=fact.id), lm_examples(lm.tokenizer, [text], self.config.inner_loop.max_seq_len))

    def score_updated(self, lm, facts: list[Fact], adapters: list[int] | None) -> list[dict]:
        return self.score(lm, facts, adapters)


class ToyPlugin(DomainPlugin):
    name = "toy"
    help = "A toy domain: restate a fact, learn it."
    run_prefix = "toy-"
    contexts_word = "facts"

    def config_class(self):
        return ToyConfig

    def contexts(self, config):
        facts = [Fact(t, x) for t, x in FACTS]
        return facts[:config.data.train], facts[config.data.train:]

    def domain(self, config):
        return ToyDomain(config)

    def evaluate(self, run, domain, held, progress, policy_runs=(), lm=None):
        """Two rows: no update, and trained on the fact itself (the context-alone row)."""
        from seal.core.models import load_configured

        lm = lm or load_configured(run.config.model)
        for fact in held:
            run.cached("toy_eval", f"eval/none/{fact.id}", lambda: dict(domain.pre_update(lm, fact), row="no update"))
            run.cached("toy_eval", f"eval/alone/{fact.id}",
                       lambda: dict(domain.evaluate(lm, fact, None, 0, {}), row="fact only"))
        return self.table(run)

    def table(self, run):
        rows = {}
        for r in run.records("toy_eval"):
            rows.setdefault(r["row"], []).append(r["reward"])
        out = [dict(condition=name, facts=len(v), score=sum(v) / len(v)) for name, v in rows.items()]
        return Table([Column("condition", kind="text"), Column("facts", kind="int"), Column("score")], out, "score",
                     "probability of the fact")


PLUGIN = ToyPlugin()


@pytest.fixture
def toy(monkeypatch, tiny_dir, tmp_path):
    """The toy domain registered by name (its plugin module is this file, as a package's would be)."""
    from seal.core import registry

    monkeypatch.setitem(registry.DOMAINS, "toy", __name__)
    return ["--set", f"model.name={tiny_dir}", "--set", f"runs_dir={tmp_path / 'runs'}", "--set", "model.precision=fp32",
            "--set", "self_edit.max_new_tokens=8", "--set", "inner_loop.epochs=1", "--set", "inner_loop.rank=4",
            "--set", "inner_loop.alpha=8", "--set", "restem.k=2", "--set", "restem.sft.epochs=1",
            "--set", "restem.sft.rank=4", "--set", "restem.sft.alpha=8", "--set", "restem.evaluate_policy=false"]


def test_the_core_s_commands_run_a_domain_defined_outside_it(toy, tmp_path):
    from seal.core.commands import domain_commands
    from seal.core.runs import Run

    app = domain_commands(PLUGIN)
    result = CliRunner().invoke(app, ["restem", "--quiet", *toy])
    assert result.exit_code == 0, result.output
    [path] = list((tmp_path / "runs").iterdir())
    assert path.name.startswith("toy-restem-")
    run = Run.resume(path)
    evals = run.records("self_edit_eval")
    assert len(evals) == 2 * 2  # 2 training facts x k = 2
    assert all(0 < r["reward"] <= 1 and r["train"]["steps"] >= 1 for r in evals if r.get("valid", True))
    assert (path / run.get("round1/done")["adapter"] / "adapter_config.json").is_file()  # the M-step's policy
    table = PLUGIN.table(run)
    assert [r["condition"] for r in table.rows] == ["no update", "fact only"]
    assert all(r["facts"] == len(FACTS) - 2 for r in table.rows)
    assert "| no update | 2 |" in (path / "table.md").read_text()
    assert "learning curve" in result.output  # the core's curve, from the toy domain's records

    n = len(run.records())
    again = CliRunner().invoke(app, ["restem", "--quiet", "--resume", str(path)])
    assert again.exit_code == 0, again.output
    assert len(Run.resume(path).records()) == n  # nothing redone


def test_the_library_api_runs_the_same_domain(toy):
    config = seal.load_config(None, [a for a in toy if a != "--set"], domain="toy")
    assert isinstance(config, ToyConfig)
    run = seal.start(config)
    seal.restem(run)
    assert Path(run.path / "records.jsonl").is_file() and run.get("round1/done") is not None
    table = seal.evaluate(run)
    assert table.rows and seal.table(seal.resume(run.path)).rows == table.rows


def test_a_domain_s_bad_field_is_named_before_any_work(toy, tmp_path):
    from seal.core.commands import domain_commands

    result = CliRunner().invoke(domain_commands(PLUGIN), ["restem", "--quiet", *toy, "--set", "data.train=9"])
    assert result.exit_code == 2 and "data.train" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
