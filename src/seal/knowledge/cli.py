"""The knowledge domain's own commands (restem, evaluate and table are every domain's: core/commands.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seal.core.commands import ConfigOpt, OverlapOpt, PolicyOpt, QuietOpt, ResumeOpt, SetOpt, guard, open_run, print_table, progress_for
from seal.core.config import ConfigError
from seal.core.progress import console
from seal.knowledge.config import REMEDIES


def register(app: typer.Typer) -> None:
    from seal.knowledge.plugin import PLUGIN

    @app.command()
    @guard
    def generate(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
                 split: Annotated[str, typer.Option(help="Which passages: train, eval or all (of the configured split).")] = "train",
                 n: Annotated[int, typer.Option(help="Self-edits per passage.")] = 1,
                 quiet: QuietOpt = False):
        """Write self-edits for passages with the configured prompt style (self_edit.prompt) and sampling."""
        from seal.core.models import load_model
        from seal.core.restem import record_samples, self_edit_writer

        if split not in ("train", "eval", "all"):
            raise ConfigError(f"--split '{split}': choose train, eval or all")
        s = open_run(PLUGIN, "generate", config, set, resume)
        cfg = s.run.config
        passages = {"train": s.train, "eval": s.held, "all": s.train + s.held}[split]
        lm = load_model(cfg.model.name, cfg.model.device)
        with progress_for(s.run, quiet) as progress:
            record_samples(s.run, [(f"generate/{p.id}", p, dict(context_id=p.id, title=p.title)) for p in passages],
                           self_edit_writer(lm, s.domain, n, cfg), max(1, cfg.self_edit.batch_size // n),
                           ("generate",), progress)
        console.print(f"{len(passages) * n} self-edits written to {s.run.path / 'records.jsonl'}")

    @app.command("cpt")
    @guard
    def cpt_cmd(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None, policy: PolicyOpt = None,
                allow_overlap: OverlapOpt = False, quiet: QuietOpt = False):
        """Continued pretraining: one update on the pooled sequences of all held-out passages (per condition),
        then every question without its passage; prints the table."""
        from seal.knowledge.cpt import cpt

        s = open_run(PLUGIN, "cpt", config, set, resume, policy, allow_overlap)
        c = s.run.config.cpt
        console.print(f"{len(s.held)} passages, {c.update} update ({c.epochs} epoch(s), lr {c.lr})")
        with progress_for(s.run, quiet) as progress:
            table = cpt(s.run, s.domain, s.held, progress, policy_runs=[policy] if policy else [])
        print_table(s.run, table)

    @app.command("continual")
    @guard
    def continual_cmd(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
                      policy: Annotated[Optional[Path], typer.Option(help="A restem run directory: start from its SEAL policy (else the base model).")] = None,
                      remedy: Annotated[Optional[list[str]], typer.Option(help=f"{', '.join(REMEDIES)} (repeatable); sets continual.remedies.")] = None,
                      allow_overlap: OverlapOpt = False, quiet: QuietOpt = False):
        """Continual self-edits: T passages learned one after another (S seeded sequences), the questions of
        every seen passage asked after each step; prints retention, plasticity and the accuracy matrices."""
        from seal.knowledge.continual import continual, summary_markdown

        if remedy:
            if resume is not None:
                raise ConfigError("--resume takes the run's saved configuration; drop --remedy")
            set = list(set or []) + [f"continual.remedies=[{', '.join(remedy)}]"]
        s = open_run(PLUGIN, "continual", config, set, resume, policy, allow_overlap)
        c = s.run.config.continual
        console.print(f"{c.sequences} sequence(s) of {c.steps} steps from {len(s.held)} passages; "
                      f"remedies: {', '.join(c.remedies)}; mode: {c.mode}")
        with progress_for(s.run, quiet) as progress:
            continual(s.run, s.domain, s.held, progress, policy_run=policy)
        print(summary_markdown(s.run))
        console.print(f"[dim]written to {s.run.path / 'continual.md'}[/dim]")
