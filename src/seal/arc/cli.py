"""ARC's own commands (restem, evaluate and table are every domain's: core/commands.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seal.core.commands import ConfigOpt, QuietOpt, ResumeOpt, SetOpt, WorkersOpt, guard, open_run, print_table, progress_for, with_workers
from seal.core.config import load_config
from seal.core.domain import DomainPlugin
from seal.core.errors import ConfigError
from seal.core.progress import console


def register(app: typer.Typer, plugin: DomainPlugin) -> None:
    """Add ARC's commands to its command group (`plugin`: ARC's, as the registry holds it)."""

    @app.command("curate")
    @guard
    def curate_cmd(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None, workers: WorkersOpt = None,
                   quiet: QuietOpt = False):
        """Screen candidate tasks with fixed TTT configurations (curate.configurations); write the tasks an
        oracle solves (purpose eval), or that some configurations solve (purpose train), to a task-list file."""
        from seal.arc.curate import candidates, curate, ids_field, write_task_list
        from seal.arc.grids import grid_separator, token_counter
        from seal.core.distributed import load_run_model

        s = open_run(plugin, "curate", config, with_workers(set, workers), resume)
        cfg = s.run.config
        tasks = candidates(cfg, token_counter(cfg), grid_separator(cfg))
        console.print(f"{len(tasks)} {cfg.curate.split} tasks x {len(cfg.curate.configurations)} configurations "
                      f"x {cfg.curate.repeats} repeats")
        with progress_for(s.run, quiet) as progress:
            lm = load_run_model(cfg, progress.log)
            table = curate(s.run, lm, s.domain, tasks, progress)
        print_table(s.run, table)
        path = write_task_list(s.run, table)
        console.print(f"task list written to {path}; use it with --set {ids_field(cfg.curate.purpose)}={path}")

    @app.command("merge-lists")
    @guard
    def merge_lists(out: Annotated[Path, typer.Argument(help="The task-list file to write (.json).")],
                    sources: Annotated[list[Path], typer.Argument(help="Curation run directories or task-list files, best first.")]):
        """Merge the task lists of several curation runs (a screen done in passes) into one file for
        data.eval_ids / data.train_ids. OUT may be one of the sources (it is then extended); any other
        existing file is left alone."""
        from seal.arc.curate import ids_field, merge_task_lists, save_task_list
        from seal.arc.tasks import TaskError

        if out.suffix != ".json":
            raise TaskError(f"{out}: the merged task list is JSON; name it *.json")
        if out.exists() and out.resolve() not in {s.resolve() for s in sources}:
            raise TaskError(f"{out} exists and is not among the sources; choose another name or list it as a source")
        merged = merge_task_lists(sources)
        save_task_list(out, merged)
        console.print(f"{len(merged['tasks'])} {merged['purpose']} tasks from {len(sources)} lists written to {out}; "
                      f"use it with --set {ids_field(merged['purpose'])}={out}")

    @app.command("choices")
    @guard
    def choices_cmd(run_dir: Annotated[Path, typer.Argument(help="A restem run directory of ARC.")],
                    round: Annotated[int, typer.Option("--round", min=1, help="The round whose E-step to count (1: the base model's self-edits).")] = 1):
        """Print what a round's self-edits chose and which solved their task: by task, then by choice."""
        from seal.arc.choices import choices
        from seal.core.runs import Run

        run = Run.resume(run_dir)
        if run.config.domain != "arc":
            raise ConfigError(f"{run_dir}: a {run.config.domain} run; `seal arc choices` reads ARC restem runs")
        tasks, chosen = choices(run, round)
        print(tasks.markdown())
        print()
        print(chosen.markdown())

    @app.command("tasks")
    @guard
    def tasks(config: ConfigOpt = None, set: SetOpt = None):
        """List the configured training and evaluation tasks with their sizes (no run directory)."""
        from seal.arc.grids import grid_separator, token_counter
        from seal.arc.tasks import configured_tasks, max_side, task_tokens

        cfg = load_config(config, set or [], domain="arc")
        count = token_counter(cfg)
        sep = grid_separator(cfg)
        train, held = configured_tasks(cfg.data, count, sep)
        print("| set | task | demonstrations | tests | largest grid | tokens |\n|---|---|---|---|---|---|")
        for name, chosen in (("train", train), ("eval", held)):
            for t in chosen:
                print(f"| {name} | {t.id} | {len(t.train)} | {len(t.test)} | {max_side(t)} | {task_tokens(t, count, sep)} |")

    @app.command("show")
    @guard
    def show(task_id: Annotated[str, typer.Argument(help="A task id of the configured source (either split).")],
             config: ConfigOpt = None, set: SetOpt = None,
             png: Annotated[Optional[Path], typer.Option(help="Also draw the task to this PNG file.")] = None):
        """Print a task as text (and draw it as a picture with --png)."""
        from seal.arc.tasks import TaskError, load_split, save_picture, task_text

        cfg = load_config(config, set or [], domain="arc")
        for split in ("train", "eval"):
            found = load_split(cfg.data, split)
            if task_id in found:
                print(task_text(found[task_id]))
                if png is not None:
                    console.print(f"[dim]picture written to {save_picture(found[task_id], png)}[/dim]")
                return
        raise TaskError(f"task '{task_id}' not found in {cfg.data.source} {cfg.data.version}")
