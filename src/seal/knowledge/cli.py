"""The knowledge domain's own commands (restem, evaluate and table are every domain's: core/commands.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seal.core.commands import ConfigOpt, OverlapOpt, PolicyOpt, QuietOpt, ResumeOpt, SetOpt, guard, open_run, print_table, progress_for
from seal.core.config import ConfigError
from seal.core.domain import DomainPlugin
from seal.core.progress import console
from seal.knowledge.config import REMEDIES


def register(app: typer.Typer, plugin: DomainPlugin) -> None:
    """Add the knowledge domain's commands to its command group (`plugin`: the domain's, as the registry holds it)."""

    @app.command()
    @guard
    def generate(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
                 split: Annotated[str, typer.Option(help="Which passages: train, eval or all (of the configured split).")] = "train",
                 n: Annotated[int, typer.Option(help="Self-edits per passage.")] = 1,
                 quiet: QuietOpt = False):
        """Write self-edits for passages with the configured prompt style (self_edit.prompt) and sampling."""
        from seal.core.models import load_configured
        from seal.core.restem import record_samples, self_edit_writer

        if split not in ("train", "eval", "all"):
            raise ConfigError(f"--split '{split}': choose train, eval or all")
        s = open_run(plugin, "generate", config, set, resume)
        cfg = s.run.config
        passages = {"train": s.train, "eval": s.held, "all": s.train + s.held}[split]
        lm = load_configured(cfg.model)
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

        s = open_run(plugin, "cpt", config, set, resume, policy, allow_overlap)
        c = s.run.config.cpt
        console.print(f"{len(s.held)} passages, {c.update} update ({c.epochs} epoch(s), lr {c.lr})")
        with progress_for(s.run, quiet) as progress:
            table = cpt(s.run, s.domain, s.held, progress, policy_runs=s.policies)
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
        s = open_run(plugin, "continual", config, set, resume, policy, allow_overlap)
        c = s.run.config.continual
        console.print(f"{c.sequences} sequence(s) of {c.steps} steps from {len(s.held)} passages; "
                      f"remedies: {', '.join(c.remedies)}; mode: {c.mode}")
        with progress_for(s.run, quiet) as progress:
            continual(s.run, s.domain, s.held, progress, policy_run=s.policy)
        print(summary_markdown(s.run))
        console.print(f"[dim]written to {s.run.path / 'continual.md'}[/dim]")


def register_learning(app: typer.Typer, plugin: DomainPlugin) -> None:
    """`seal learn` and `seal ask`: teach a model your own documents, then ask it (`plugin`: the
    knowledge domain's)."""

    @app.command("learn")
    @guard
    def learn_cmd(docs: Annotated[list[Path], typer.Argument(help="Files or folders: .txt, .md, .pdf, .json, .jsonl.")],
                  out: Annotated[Path, typer.Option("--out", help="The folder to write: adapter, manifest.json, report.md (must not exist).")],
                  policy: PolicyOpt = None, config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
                  merge: Annotated[bool, typer.Option(help="Write a whole merged checkpoint instead of an adapter.")] = False,
                  add: Annotated[bool, typer.Option("--add", help="--out is a folder learned before: learn the new documents into it (those with a known content hash are skipped), with its settings.")] = False,
                  field: Annotated[str, typer.Option(help="JSON/JSONL: the field holding a record's text.")] = "text",
                  title_field: Annotated[str, typer.Option(help="JSON/JSONL: the field holding a record's title.")] = "title",
                  quiet: QuietOpt = False):
        """Teach the model the documents: passages, self-written questions, the best of k self-edits each
        (chosen on half of the questions), one update on them all, scored on the other half."""
        from seal import api

        learned = api.learn(docs, out, config, set or [], policy, resume, merge, add, field, title_field,
                            show_progress=not quiet)
        for path in learned.known:
            console.print(f"[dim]already learned: {path}[/dim]")
        if learned.run is None:
            console.print(f"nothing new to learn: every document is already in {out}")
            return
        print(learned.table.markdown())
        console.print(f"learned {learned.passages} passages of {learned.documents} documents; written to {learned.path} "
                      f"(ask it: seal ask {learned.path} \"your question\")")

    @app.command("ask")
    @guard
    def ask_cmd(folder: Annotated[Path, typer.Argument(help="A `seal learn` output folder.")],
                question: Annotated[Optional[str], typer.Argument(help="The question (or --interactive).")] = None,
                compare: Annotated[bool, typer.Option(help="Also show the base model's answer.")] = False,
                interactive: Annotated[bool, typer.Option(help="Ask one question after another (an empty line ends).")] = False):
        """Answer closed-book with the learned weights."""
        from seal.knowledge.learned import Asker

        if question is None and not interactive:
            raise ConfigError("give a question, or --interactive")
        asker = Asker(folder)

        def one(q: str) -> None:
            src = asker.source(q)
            print(f"{asker.answer(q)}    [from {src['document']}]")
            if compare:
                print(f"  base model: {asker.answer(q, base=True)}")
        if question is not None:
            one(question)
        while interactive:
            q = input("? ").strip()
            if not q:
                break
            one(q)
