"""What every command of every domain shares: options, the one-line error guard, the run directory a
command gets (core/starting.py checks it first), the ReST-EM / evaluate / table / curve / noise
commands, and printing a table. The commands are thin: their work is the library API's (seal/api.py).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from seal.core import starting
from seal.core.config import ConfigError
from seal.core.domain import Domain, DomainPlugin
from seal.core.progress import Progress, console
from seal.core.registry import DOMAINS, plugin
from seal.core.starting import open_run

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file (see configs/).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a field: section.field=value (repeatable), e.g. --set inner_loop.lr=3e-4")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run directory instead of starting a new one.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars (progress still goes to RUN_DIR/progress.log).")]
PolicyOpt = Annotated[Optional[Path], typer.Option(help="A restem run directory: adds its rounds' rows to the table.")]
PoliciesOpt = Annotated[Optional[list[Path]], typer.Option("--policy", help="A restem run directory: adds its rounds' rows to the table (repeatable: e.g. a ReST-EM and an RLOO run, each row named by its algorithm).")]
ReuseOpt = Annotated[Optional[Path], typer.Option("--reuse-round1", help="A restem run directory with the same configuration (up to restem.rounds, algorithm, sft and evaluate_policy, and eval): take its round-1 samples and evaluations instead of computing them again, e.g. to compare RLOO with ReST-EM from the same first E-step. Where only inner_loop, answer or reward settings differ, only the samples are taken.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, help="Ray workers for the inner loop, sampling and scores (distributed.workers; 0: this process only). With --resume it may change.")]
OverlapOpt = Annotated[bool, typer.Option("--allow-overlap", help="Score contexts that --policy was trained on (or that share its articles) anyway.")]

def fail(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(2)


def input_errors() -> tuple[type[Exception], ...]:
    from seal.core.distributed import WorkerError
    from seal.core.models import ModelLoadError

    errors: tuple[type[Exception], ...] = (ConfigError, ModelLoadError, WorkerError)
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

    while starting.created:  # run directories this process created: removed again if the command fails on bad input
        path = starting.created.pop()
        if path.is_dir() and not (path / "records.jsonl").exists():
            shutil.rmtree(path)


def with_workers(overrides: Optional[list[str]], workers: Optional[int]) -> list[str]:
    """`--set` overrides with `--workers N` added as distributed.workers=N."""
    return [*(overrides or []), *([] if workers is None else [f"distributed.workers={workers}"])]


def progress_for(run, quiet: bool) -> Progress:
    if quiet:  # nor the weight-loading bars of transformers, which would fill a redirected log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return Progress(enabled=not quiet, log=run.path / "progress.log")


def print_table(run, table, track: bool = True) -> None:
    """Print a run's comparison table, write table.md / table.csv, and (`track`) hand it to the run's
    experiment trackers."""
    from seal.core.restem import timing_summary

    if not table.rows:
        console.print("no evaluation records in this run yet")
        return
    print(table.write(run.path))
    if track:
        run.track_table("comparison", table)
    if table.extra:
        print()
        print(table.extra)
    for line in table.notes + timing_summary(run):
        console.print(f"[dim]{line}[/dim]")
    console.print(f"[dim]table written to {run.path / 'table.md'} and table.csv[/dim]")


def print_curve(run, domain: Domain | None = None, contexts: list | None = None, track: bool = True) -> None:
    """Print the run's learning curve (core/curves.py), write curve.md / curve.csv beside its records,
    and (`track`) hand it to the run's experiment trackers."""
    from seal.core.curves import learning_curve, sources

    curve = learning_curve(run, sources(domain, contexts or []))
    if not curve.rows:
        return
    console.print("[bold]learning curve[/bold]: each policy's own self-edits on the training "
                  f"{plugin(run.config.domain).contexts_word} (policy 0 = the base model)")
    print(curve.write(run.path, "curve"))
    if track:
        run.track_table("curve", curve)
    console.print(f"[dim]written to {run.path / 'curve.md'} and curve.csv[/dim]")


def run_contexts(run) -> tuple[Domain | None, list]:
    """The domain and training contexts of a recorded run, when its data is still where it was."""
    p = plugin(run.config.domain)
    try:
        return p.domain(run.config), p.contexts(run.config)[0]
    except p.input_errors:
        return None, []


ColumnsOpt = Annotated[Optional[str], typer.Option("--columns", help="Print only these columns, in this order, as a results page shows them: headers or keys separated by | (e.g. \"condition | reward (loglik) | 95% CI\"); the run's table files stay whole.")]


def show_run(run_dir: Path, columns: Optional[str] = None) -> None:
    """Print what a run holds: its comparison table (`columns`: only those), or its domain's own summary."""
    from seal.core.runs import Run

    run = Run.resume(run_dir)
    p = plugin(run.config.domain)
    text = p.show(run)
    if text is not None:
        print(text)
        return
    table = p.table(run)
    if columns:
        print(table.select(columns).markdown())
        return
    print_table(run, table, track=False)


def domain_commands(p: DomainPlugin) -> typer.Typer:
    """A domain's command group: restem, evaluate and table for every domain, then its own commands."""
    app = typer.Typer(help=p.help, no_args_is_help=True)
    word = p.contexts_word

    @app.command("restem")
    @guard
    def restem(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None, reuse_round1: ReuseOpt = None,
               eval: Annotated[Optional[bool], typer.Option(
                   "--eval/--no-eval", show_default=False,
                   help="Evaluate the comparison table on held-out contexts after the rounds [default: yes; "
                        "with --resume: as the run started]")] = None,
               workers: WorkersOpt = None, quiet: QuietOpt = False):
        """Run ReST-EM rounds on the training contexts, then print the comparison table on the held-out ones."""
        from seal import api
        from seal.core.restem import reset_to_base

        s = open_run(p, "restem", config, with_workers(set, workers), resume, reuse=reuse_round1,
                     flags=dict(eval=True if eval is None else eval))
        evaluate_after = s.flags["eval"] if eval is None else eval
        cfg = s.run.config
        console.print(f"{len(s.train)} training {word}, {len(s.held)} held-out {word}")
        start = time.perf_counter()
        with progress_for(s.run, quiet) as progress:
            lm = api.restem(s.run, progress=progress)
            console.print(f"{cfg.restem.algorithm}: {cfg.restem.rounds} round(s) on {len(s.train)} {word} done "
                          f"in {time.perf_counter() - start:.0f} s")
            print_curve(s.run, s.domain, s.train)
            if not (evaluate_after and s.held):
                return
            reset_to_base(lm)  # the table's first rows are the base model's
            table = api.evaluate(s.run, policy=s.run.path, lm=lm, progress=progress)
        print_table(s.run, table)

    @app.command("evaluate")
    @guard
    def evaluate(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None, policy: PoliciesOpt = None,
                 allow_overlap: OverlapOpt = False, workers: WorkersOpt = None, quiet: QuietOpt = False):
        """Print the comparison table on the held-out contexts (baselines, and a SEAL policy's rounds)."""
        from seal import api

        s = open_run(p, "evaluate", config, with_workers(set, workers), resume, policy, allow_overlap)
        with progress_for(s.run, quiet) as progress:
            table = api.evaluate(s.run, policy=s.policies, progress=progress)
        print_table(s.run, table)

    @app.command("table")
    @guard
    def table(run_dirs: Annotated[list[Path], typer.Argument(help="A run directory of this domain, or several evaluated on different contexts.")],
              out: Annotated[Optional[Path], typer.Option(help="With several runs: also write table.md/table.csv of the joined table here.")] = None,
              columns: ColumnsOpt = None):
        """Print (and rewrite table.md/table.csv of) what a run directory recorded. With several run
        directories (one domain and model, different contexts), one table over all their contexts."""
        if len(run_dirs) == 1 and out is None:
            show_run(run_dirs[0], columns)
            return
        from seal.core.runs import RunSet

        runs = RunSet(run_dirs)
        if out is not None:
            if (out / "config.yaml").exists():
                raise ConfigError(f"--out {out}: a run directory; a joined table goes to a folder of its own")
            out.mkdir(parents=True, exist_ok=True)
        joined = plugin(runs.config.domain).table(runs)
        if not joined.rows:
            console.print("no evaluation records in these runs yet")
            return
        shown = joined.select(columns)
        if out is not None:
            joined.write(out)
        print(shown.markdown())
        if joined.extra:
            print()
            print(joined.extra)
        for line in joined.notes:
            console.print(f"[dim]{line}[/dim]")
        console.print(f"[dim]joined {len(run_dirs)} runs: {', '.join(str(d) for d in run_dirs)}"
                      + (f"; written to {out / 'table.md'} and table.csv" if out else "") + "[/dim]")

    @app.command("curve")
    @guard
    def curve(run_dir: Annotated[Path, typer.Argument(help="A restem run directory of this domain.")],
              columns: ColumnsOpt = None):
        """Print a restem run's learning curve: every policy's own self-edits on the training contexts."""
        from seal.core.curves import learning_curve, sources
        from seal.core.runs import Run

        run = Run.resume(run_dir)
        if columns:
            print(learning_curve(run, sources(*run_contexts(run))).select(columns).markdown())
            return
        print_curve(run, *run_contexts(run), track=False)

    @app.command("noise")
    @guard
    def noise(run_dirs: Annotated[list[Path], typer.Argument(help="restem run directories with inner_loop.eval_times >= 2.")],
              draws: Annotated[int, typer.Option(help="Bootstrap draws of the repeats per context.")] = 1000):
        """How noisy self-edit rewards are: the spread between repeats of one self-edit and between the
        self-edits of a context, and how often the best of k would change under a re-draw; where a
        watched reward was recorded (reward.watch_gold), how well the reward ranks by it."""
        from seal.core.noise import noise_table, watched_table
        from seal.core.runs import Run

        runs = [Run.resume(d) for d in run_dirs]
        tables = [t for t in (noise_table(runs, draws), watched_table(runs)) if t.rows]
        if not tables:
            fail("no E-step with 2 or more self-edits trained 2 or more times each, nor a watched reward, in these runs")
        for table in tables:
            print(table.markdown())
            for line in table.notes:
                console.print(f"[dim]{line}[/dim]")

    p.register(app)
    return app
