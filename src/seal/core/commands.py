"""What every command of every domain shares: options, the one-line error guard, starting or resuming a
run after every check has passed, the ReST-EM / evaluate / table commands, and printing a table.

`open_run` is the one way a command gets its run directory. It checks, in this order and before the
directory exists: the configuration, the data (the domain's contexts), the model name and the LoRA
recipes against the model's layers (read from its configuration, no weights), the domain's own
checks for the command, and `--policy`. A run that cannot start leaves no directory behind.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from seal.core.config import ConfigError, load_config
from seal.core.domain import DOMAINS, Domain, DomainPlugin, plugin
from seal.core.progress import Progress, console

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file (see configs/).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a field: section.field=value (repeatable), e.g. --set inner_loop.lr=3e-4")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run directory instead of starting a new one.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars (progress still goes to RUN_DIR/progress.log).")]
PolicyOpt = Annotated[Optional[Path], typer.Option(help="A restem run directory: adds its rounds' rows to the table.")]
OverlapOpt = Annotated[bool, typer.Option("--allow-overlap", help="Score contexts that --policy was trained on (or that share its articles) anyway.")]

_fresh: list[Path] = []  # run directories created by this process, removed again if the command fails on bad input


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(2)


def input_errors() -> tuple[type[Exception], ...]:
    from seal.core.models import ModelLoadError

    errors: tuple[type[Exception], ...] = (ConfigError, ModelLoadError)
    for name in DOMAINS:
        errors += plugin(name).input_errors
    return errors


def guard(fn):
    """Turn the project's own input errors into one clear line instead of a traceback. A run directory
    this command created and that holds no record yet is removed again."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except input_errors() as err:
            _remove_empty_runs()
            fail(str(err))
        except KeyboardInterrupt:
            console.print("\n[yellow]interrupted[/yellow]: finished work is saved; continue with --resume RUN_DIR")
            raise typer.Exit(130) from None

    return wrapper


def _remove_empty_runs() -> None:
    import shutil

    while _fresh:
        path = _fresh.pop()
        if path.is_dir() and not (path / "records.jsonl").exists():
            shutil.rmtree(path)


@dataclass
class Started:
    run: Any  # core.runs.Run
    train: list
    held: list
    domain: Domain
    plugin: DomainPlugin


def check_run(p: DomainPlugin, command: str, config, policy: Optional[Path] = None,
              allow_overlap: bool = False) -> tuple[list, list, Domain]:
    """Every check a command needs before its run directory may exist; returns (training contexts,
    held-out contexts, the domain's inner loop)."""
    from seal.core.models import model_layer_names
    from seal.core.training import check_targets

    train, held = p.contexts(config)
    names = model_layer_names(config.model.name)
    for field, recipe in p.lora_sections(config, command):
        check_targets(names, recipe, f"{field}.target_modules")
    p.check(config, command, held)
    domain = p.domain(config)
    if policy is not None:
        check_policy(p, domain, config, policy, held, allow_overlap)
    return train, held, domain


def open_run(p: DomainPlugin, command: str, config_file: Optional[Path], overrides: Optional[list[str]],
             resume: Optional[Path], policy: Optional[Path] = None, allow_overlap: bool = False) -> Started:
    """Check everything (see the module's docstring), then create the run directory or reopen it."""
    from seal.core.runs import Run

    run_command = p.run_prefix + command
    if resume is not None:
        if config_file or overrides:
            raise ConfigError("--resume takes the run's saved configuration; drop --config/--set")
        run = Run.resume(resume)
        if run.command != run_command:
            raise ConfigError(f"--resume {resume}: that is a '{run.command}' run, not '{run_command}'")
        config = run.config
    else:
        config = load_config(config_file, overrides or [], domain=p.name)
    train, held, domain = check_run(p, command, config, policy, allow_overlap)
    if resume is None:
        run = Run.create(config, run_command)
        _fresh.append(run.path)
        console.print(f"run directory: [bold]{run.path}[/bold]")
    else:
        console.print(f"resuming [bold]{run.path}[/bold] ({len(run.records())} records done)")
    return Started(run, train, held, domain, p)


def check_policy(p: DomainPlugin, domain: Domain, config, policy: Path, held: list, allow_overlap: bool) -> None:
    """A SEAL policy is only scored on the model it was trained from, and (unless allowed) never on
    contexts it was trained on or that share a group (an article) with them."""
    from seal.core.runs import Run

    where = f"--policy {policy}"
    if not (policy / "config.yaml").is_file():
        raise ConfigError(f"{where}: not a run directory (no config.yaml)")
    run = Run.resume(policy)
    if run.command != p.run_prefix + "restem":
        raise ConfigError(f"{where}: a '{run.command}' run, not a {p.run_prefix}restem run")
    if run.config.model.name != config.model.name:
        raise ConfigError(f"{where}: its policy was trained from model '{run.config.model.name}', "
                          f"but this run uses '{config.model.name}'")
    if allow_overlap:
        return
    trained = {r["context_id"] for r in run.records("samples") if r["key"].startswith("round")}
    groups: set[str] = set()
    try:  # its configured training split gives the groups (articles) as well
        policy_train, _ = p.contexts(run.config)
        trained |= {domain.context_id(c) for c in policy_train}
        groups = {domain.context_group(c) for c in policy_train}
    except p.input_errors:
        pass  # its data is not here: the ids in its records still count
    by_id = sum(domain.context_id(c) in trained for c in held)
    by_group = sum(domain.context_group(c) in groups for c in held)
    if by_id or by_group:
        raise ConfigError(f"{where}: {by_id} of the {len(held)} {p.contexts_word} scored here were in its training "
                          f"set, {by_group} share {p.group_word} with it; use --allow-overlap to score them anyway")


def progress_for(run, quiet: bool) -> Progress:
    return Progress(enabled=not quiet, log=run.path / "progress.log")


def print_table(run, table) -> None:
    from seal.core.restem import timing_summary

    if not table.rows:
        console.print("no evaluation records in this run yet")
        return
    print(table.write(run.path))
    if table.extra:
        print()
        print(table.extra)
    for line in table.notes + timing_summary(run):
        console.print(f"[dim]{line}[/dim]")
    console.print(f"[dim]table written to {run.path / 'table.md'} and table.csv[/dim]")


def show_run(run_dir: Path) -> None:
    """Print what a run holds: its comparison table, or its domain's own summary."""
    from seal.core.runs import Run

    run = Run.resume(run_dir)
    p = plugin(run.config.domain)
    text = p.show(run)
    if text is not None:
        print(text)
        return
    print_table(run, p.table(run))


def domain_commands(p: DomainPlugin) -> typer.Typer:
    """A domain's command group: restem, evaluate and table for every domain, then its own commands."""
    app = typer.Typer(help=p.help, no_args_is_help=True)
    word = p.contexts_word

    @app.command("restem")
    @guard
    def restem(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
               eval: Annotated[bool, typer.Option(help="Evaluate the comparison table on held-out contexts after the rounds.")] = True,
               quiet: QuietOpt = False):
        """Run ReST-EM rounds on the training contexts, then print the comparison table on the held-out ones."""
        from seal.core.models import load_model
        from seal.core.restem import restem as run_restem

        s = open_run(p, "restem", config, set, resume)
        cfg = s.run.config
        console.print(f"{len(s.train)} training {word}, {len(s.held)} held-out {word}")
        start = time.perf_counter()
        lm = load_model(cfg.model.name, cfg.model.device)
        with progress_for(s.run, quiet) as progress:
            run_restem(s.run, lm, s.domain, s.train, progress)
            console.print(f"ReST-EM: {cfg.restem.rounds} round(s) on {len(s.train)} {word} done "
                          f"in {time.perf_counter() - start:.0f} s")
            if not (eval and s.held):
                return
            table = p.evaluate(s.run, s.domain, s.held, progress, policy_run=s.run.path)
        print_table(s.run, table)

    @app.command("evaluate")
    @guard
    def evaluate(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None, policy: PolicyOpt = None,
                 allow_overlap: OverlapOpt = False, quiet: QuietOpt = False):
        """Print the comparison table on the held-out contexts (baselines, and a SEAL policy's rounds)."""
        s = open_run(p, "evaluate", config, set, resume, policy, allow_overlap)
        with progress_for(s.run, quiet) as progress:
            table = p.evaluate(s.run, s.domain, s.held, progress, policy_run=policy)
        print_table(s.run, table)

    @app.command("table")
    @guard
    def table(run_dir: Annotated[Path, typer.Argument(help="A run directory of this domain.")]):
        """Print (and rewrite table.md/table.csv of) what a run directory recorded."""
        show_run(run_dir)

    p.register(app)
    return app
