"""The `seal` command line. Every command writes a new run directory; `--resume` continues one."""

import functools
import warnings
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from seal.config import Config, ConfigError, dump_config, load_config
from seal.core.progress import Progress, console

# peft calls a transformers method that transformers 5 marks as deprecated; not ours to fix.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

app = typer.Typer(help="SEAL: self-adapting language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
knowledge = typer.Typer(help="Knowledge incorporation: learn passages from self-written training data.",
                        no_args_is_help=True)
app.add_typer(knowledge, name="knowledge")
arc = typer.Typer(help="Few-shot ARC: the model chooses its own test-time training configuration.",
                  no_args_is_help=True)
app.add_typer(arc, name="arc")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file (see configs/).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a field: section.field=value (repeatable), e.g. --set inner_loop.lr=3e-4")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run directory instead of starting a new one.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(2)


def _open(command: str, config_file: Optional[Path], overrides: Optional[list[str]], resume: Optional[Path],
          domain: str, prepare):
    """Validate the configuration, `prepare(config)` (data, prompts: raises on bad input) and the model
    name, then create (or reopen) the run directory: a run that cannot start leaves no directory behind."""
    from seal.core.models import resolve_checkpoint
    from seal.core.runs import Run

    if resume is not None:
        if config_file or overrides:
            _fail("--resume takes the run's saved configuration; drop --config/--set")
        run = Run.resume(resume)
        if run.command != command:
            _fail(f"--resume {resume}: that is a '{run.command}' run, not '{command}'")
        config = run.config
    else:
        config = load_config(config_file, overrides or [], domain=domain)
    prepared = prepare(config)
    resolve_checkpoint(config.model.name)
    if resume is None:
        run = Run.create(config, command)
        console.print(f"run directory: [bold]{run.path}[/bold]")
    else:
        console.print(f"resuming [bold]{run.path}[/bold] ({len(run.records())} records done)")
    return run, prepared


def _start(command: str, config_file: Optional[Path], overrides: Optional[list[str]], resume: Optional[Path]):
    run, (train, held, domain) = _open(command, config_file, overrides, resume, "knowledge",
                                       lambda c: (*_passages(c), _domain(c)))
    return run, train, held, domain


def _passages(config: Config):
    from seal.knowledge.data import load_passages, split_passages

    d = config.data
    passages = load_passages(d.source, d.path, d.hub_split)
    return split_passages(passages, d.train_passages, d.eval_passages, config.seed, d.split_by_article)


def _domain(config: Config):
    from seal.core.endpoint import ChatEndpoint, Judge
    from seal.knowledge.inner_loop import KnowledgeDomain

    j = config.judge
    judge = Judge(ChatEndpoint(j.base_url, j.model, j.api_key_env, j.retries, j.timeout_s)) if j.base_url else None
    return KnowledgeDomain(config, judge)


def _guard(fn):
    """Turn the project's own input errors into one clear line instead of a traceback."""
    from seal.arc.tasks import TaskError
    from seal.core.models import ModelLoadError
    from seal.knowledge.data import DataError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, ModelLoadError, TaskError) as err:
            _fail(str(err))
        except KeyboardInterrupt:
            console.print("\n[yellow]interrupted[/yellow]: finished work is saved; continue with --resume RUN_DIR")
            raise typer.Exit(130)

    return wrapper


@knowledge.command()
@_guard
def restem(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
           eval: Annotated[bool, typer.Option(help="Evaluate the comparison table on held-out passages after the rounds.")] = True,
           quiet: QuietOpt = False):
    """Run ReST-EM rounds on training passages, then print the comparison table on held-out passages."""
    from seal.core.models import load_model
    from seal.core.restem import restem as run_restem
    from seal.core.training import check_targets
    from seal.knowledge.evaluate import evaluate

    run, train, held, domain = _start("restem", config, set, resume)
    cfg = run.config
    start = time.perf_counter()
    lm = load_model(cfg.model.name, cfg.model.device)
    check_targets(lm.model, cfg.inner_loop, "inner_loop.target_modules")  # before any work, not mid-round
    check_targets(lm.model, cfg.restem.sft, "restem.sft.target_modules")
    with Progress(enabled=not quiet, log=run.path / "progress.log") as progress:
        run_restem(run, lm, domain, train, progress)
        console.print(f"ReST-EM: {cfg.restem.rounds} round(s) on {len(train)} passages done "
                      f"in {time.perf_counter() - start:.0f} s")
        if eval and held:
            rows = evaluate(run, domain, held, progress, policy_run=run.path)
    if eval and held:
        _print_table(run, rows)


@knowledge.command("evaluate")
@_guard
def evaluate_cmd(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
                 policy: Annotated[Optional[Path], typer.Option(help="A restem run directory: adds its rounds' rows to the table.")] = None,
                 quiet: QuietOpt = False):
    """Print the comparison table on held-out passages (base, passage only, base/teacher/SEAL self-edits)."""
    from seal.knowledge.evaluate import evaluate

    if policy is not None and not (policy / "config.yaml").is_file():
        _fail(f"--policy {policy}: not a run directory (no config.yaml)")
    run, _, held, domain = _start("evaluate", config, set, resume)
    with Progress(enabled=not quiet, log=run.path / "progress.log") as progress:
        rows = evaluate(run, domain, held, progress, policy_run=policy)
    _print_table(run, rows)


@knowledge.command()
@_guard
def generate(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
             split: Annotated[str, typer.Option(help="Which passages: train, eval or all (of the configured split).")] = "train",
             n: Annotated[int, typer.Option(help="Self-edits per passage.")] = 1,
             quiet: QuietOpt = False):
    """Write self-edits for passages with the configured prompt style (self_edit.prompt) and sampling."""
    from seal.core.models import load_model
    from seal.core.restem import record_samples, self_edit_writer

    if split not in ("train", "eval", "all"):
        _fail(f"--split '{split}': choose train, eval or all")
    run, train, held, domain = _start("generate", config, set, resume)
    cfg = run.config
    passages = {"train": train, "eval": held, "all": train + held}[split]
    lm = load_model(cfg.model.name, cfg.model.device)
    with Progress(enabled=not quiet, log=run.path / "progress.log") as progress:
        record_samples(run, [(f"generate/{p.id}", p, dict(context_id=p.id, title=p.title)) for p in passages],
                       self_edit_writer(lm, domain, n, cfg), max(1, cfg.self_edit.batch_size // n),
                       ("generate",), progress)
    console.print(f"{len(passages) * n} self-edits written to {run.path / 'records.jsonl'}")


@knowledge.command("cpt")
@_guard
def cpt_cmd(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
            policy: Annotated[Optional[Path], typer.Option(help="A restem run directory: adds its rounds' rows to the table.")] = None,
            quiet: QuietOpt = False):
    """Continued pretraining: one update on the pooled sequences of all held-out passages (per condition),
    then every question without its passage; prints the table."""
    from seal.knowledge.cpt import cpt

    if policy is not None and not (policy / "config.yaml").is_file():
        _fail(f"--policy {policy}: not a run directory (no config.yaml)")
    run, _, held, domain = _start("cpt", config, set, resume)
    if not held:
        _fail("no passages: set data.eval_passages (the passages pooled for continued pretraining)")
    cfg = run.config.cpt
    console.print(f"{len(held)} passages, {cfg.update} update ({cfg.epochs} epoch(s), lr {cfg.lr})")
    with Progress(enabled=not quiet, log=run.path / "progress.log") as progress:
        rows = cpt(run, domain, held, progress, policy_run=policy)
    _print_table(run, rows)


@knowledge.command("continual")
@_guard
def continual_cmd(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
                  policy: Annotated[Optional[Path], typer.Option(help="A restem run directory: start from its SEAL policy (else the base model).")] = None,
                  remedy: Annotated[Optional[list[str]], typer.Option(help="none, replay, kl, orthogonal or route (repeatable); sets continual.remedies.")] = None,
                  quiet: QuietOpt = False):
    """Continual self-edits: T passages learned one after another (S seeded sequences), the questions of
    every seen passage asked after each step; prints retention, plasticity and the accuracy matrices."""
    from seal.knowledge.continual import continual

    if policy is not None and not (policy / "config.yaml").is_file():
        _fail(f"--policy {policy}: not a run directory (no config.yaml)")
    if remedy:
        if resume is not None:
            _fail("--resume takes the run's saved configuration; drop --remedy")
        set = list(set or []) + [f"continual.remedies=[{', '.join(remedy)}]"]
    run, _, held, domain = _start("continual", config, set, resume)
    c = run.config.continual
    console.print(f"{c.sequences} sequence(s) of {c.steps} steps from {len(held)} passages; "
                  f"remedies: {', '.join(c.remedies)}; mode: {c.mode}")
    with Progress(enabled=not quiet, log=run.path / "progress.log") as progress:
        continual(run, domain, held, progress, policy_run=policy)
    _print_continual(run)


def _print_continual(run) -> None:
    from seal.knowledge.continual import matrix_table, summary, summary_table

    summ = summary(run)
    if not summ:
        console.print("no continual steps in this run yet")
        return
    parts = [summary_table(summ, run.config.reward.metric)]
    for name, s in summ.items():
        parts.append(f"{name}: mean ± sd over sequences\n\n{matrix_table(s)}")
    md = "\n\n".join(parts)
    (run.path / "continual.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    console.print(f"[dim]written to {run.path / 'continual.md'}[/dim]")


@knowledge.command()
@_guard
def table(run_dir: Annotated[Path, typer.Argument(help="A restem, evaluate, cpt or continual run directory.")]):
    """Print (and rewrite table.md/table.csv of) the comparison table recorded in a run directory."""
    from seal.core.runs import Run
    from seal.knowledge.evaluate import table_rows

    run = Run.resume(run_dir)
    if run.command == "continual":
        _print_continual(run)
        return
    _print_table(run, table_rows(run, run.config))


def _print_table(run, rows) -> None:
    from seal.core.restem import timing_summary
    from seal.knowledge.evaluate import write_table

    if not rows:
        console.print("no evaluation records in this run yet")
        return
    md = write_table(run, rows)
    print(md)
    for line in timing_summary(run):
        console.print(f"[dim]{line}[/dim]")
    console.print(f"[dim]table written to {run.path / 'table.md'} and table.csv[/dim]")


# --- ARC -----------------------------------------------------------------------------------------
def _arc_start(command: str, config_file, overrides, resume):
    from seal.arc.inner_loop import ArcDomain
    from seal.arc.tasks import configured_tasks

    run, (train, held) = _open(command, config_file, overrides, resume, "arc",
                               lambda c: configured_tasks(c.data, _token_counter(c)))
    return run, train, held, ArcDomain(run.config)


def _token_counter(config):
    from seal.core.models import load_tokenizer

    tok = load_tokenizer(config.model.name)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


@arc.command("restem")
@_guard
def arc_restem(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
               eval: Annotated[bool, typer.Option(help="Evaluate the baseline table on the evaluation tasks after the rounds.")] = True,
               quiet: QuietOpt = False):
    """ReST-EM on the training tasks (reward: solved after TTT with the self-edit's configuration), then
    the baseline table on the evaluation tasks."""
    from seal.arc.evaluate import evaluate
    from seal.core.models import load_model
    from seal.core.restem import restem as run_restem
    from seal.core.training import check_targets

    run, train, held, domain = _arc_start("arc-restem", config, set, resume)
    cfg = run.config
    console.print(f"{len(train)} training tasks, {len(held)} evaluation tasks: {', '.join(t.id for t in held)}")
    start = time.perf_counter()
    lm = load_model(cfg.model.name, cfg.model.device)
    check_targets(lm.model, cfg.inner_loop, "inner_loop.target_modules")
    check_targets(lm.model, cfg.restem.sft, "restem.sft.target_modules")
    with Progress(enabled=not quiet, log=run.path / "progress.log") as progress:
        run_restem(run, lm, domain, train, progress)
        console.print(f"ReST-EM: {cfg.restem.rounds} round(s) on {len(train)} tasks done in {time.perf_counter() - start:.0f} s")
        if eval and held:
            rows = evaluate(run, domain, held, progress, policy_run=run.path)
    if eval and held:
        _print_arc_table(run, rows)


@arc.command("evaluate")
@_guard
def arc_evaluate(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = None,
                 policy: Annotated[Optional[Path], typer.Option(help="An arc restem run directory: adds its rounds' rows.")] = None,
                 quiet: QuietOpt = False):
    """The baseline table on the evaluation tasks: ICL, TTT with base self-edits, oracle TTT (and SEAL rounds)."""
    from seal.arc.evaluate import evaluate

    if policy is not None and not (policy / "config.yaml").is_file():
        _fail(f"--policy {policy}: not a run directory (no config.yaml)")
    run, _, held, domain = _arc_start("arc-evaluate", config, set, resume)
    if not held:
        _fail("no evaluation tasks: set data.eval_ids, or loosen data.max_tokens / data.max_grid")
    with Progress(enabled=not quiet, log=run.path / "progress.log") as progress:
        rows = evaluate(run, domain, held, progress, policy_run=policy)
    _print_arc_table(run, rows)


@arc.command("table")
@_guard
def arc_table(run_dir: Annotated[Path, typer.Argument(help="An arc restem or evaluate run directory.")]):
    """Print (and rewrite table.md/table.csv of) the baseline table recorded in a run directory."""
    from seal.arc.evaluate import table_rows
    from seal.core.runs import Run

    run = Run.resume(run_dir)
    _print_arc_table(run, table_rows(run, run.config))


@arc.command("tasks")
@_guard
def arc_tasks(config: ConfigOpt = None, set: SetOpt = None):
    """List the configured training and evaluation tasks with their sizes (no run directory)."""
    from seal.arc.tasks import configured_tasks, max_side, task_tokens

    cfg = load_config(config, set or [], domain="arc")
    count = _token_counter(cfg)
    train, held = configured_tasks(cfg.data, count)
    print("| set | task | demonstrations | tests | largest grid | tokens |\n|---|---|---|---|---|---|")
    for name, tasks in (("train", train), ("eval", held)):
        for t in tasks:
            print(f"| {name} | {t.id} | {len(t.train)} | {len(t.test)} | {max_side(t)} | {task_tokens(t, count)} |")


@arc.command("show")
@_guard
def arc_show(task_id: Annotated[str, typer.Argument(help="A task id of the configured source (either split).")],
             config: ConfigOpt = None, set: SetOpt = None,
             png: Annotated[Optional[Path], typer.Option(help="Also draw the task to this PNG file.")] = None):
    """Print a task as text (and draw it as a picture with --png)."""
    from seal.arc.tasks import TaskError, load_split, save_picture, task_text

    cfg = load_config(config, set or [], domain="arc")
    for split in ("train", "eval"):
        tasks = load_split(cfg.data, split)
        if task_id in tasks:
            print(task_text(tasks[task_id]))
            if png is not None:
                console.print(f"[dim]picture written to {save_picture(tasks[task_id], png)}[/dim]")
            return
    raise TaskError(f"task '{task_id}' not found in {cfg.data.source} {cfg.data.version}")


def _print_arc_table(run, rows) -> None:
    from seal.arc.evaluate import task_table, write_table
    from seal.core.restem import timing_summary

    if not rows:
        console.print("no evaluation records in this run yet")
        return
    print(write_table(run, rows))
    print()
    print(task_table(rows))
    for line in timing_summary(run):
        console.print(f"[dim]{line}[/dim]")
    console.print(f"[dim]table written to {run.path / 'table.md'} and table.csv[/dim]")


@app.command("report")
@_guard
def report_cmd(run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
               out: Annotated[Optional[Path], typer.Option(help="Folder for report.md and the figures (default: RUN_DIR/report for one run, a new reports/report-TIME for several).")] = None):
    """Markdown tables and PNG plots (with their data as CSV/JSON) for recorded runs, side by side."""
    from seal.report import write_report

    if out is None:
        if len(run_dirs) == 1:
            out = run_dirs[0] / "report"
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = next(p for n in range(1, 1000)
                       if not (p := Path("reports") / (f"report-{stamp}" + (f"-{n}" if n > 1 else ""))).exists())
    path = write_report(run_dirs, out)
    print(path.read_text(encoding="utf-8"))
    console.print(f"[dim]report written to {path} (figures and their data next to it)[/dim]")


@app.command("config")
@_guard
def show_config(config: ConfigOpt = None, set: SetOpt = None,
                schema: Annotated[bool, typer.Option(help="List every field with its type and meaning instead.")] = False,
                domain: Annotated[Optional[str], typer.Option(help="knowledge or arc (default: the file's, else knowledge)")] = None):
    """Print the resolved configuration (defaults + file + overrides) as YAML."""
    from seal.config import config_class

    cfg = load_config(config, set or [], domain=domain)
    if not schema:
        print(dump_config(cfg), end="")
        return
    for line in _schema_lines(config_class(cfg.domain)):
        print(line)


def _schema_lines(model, prefix: str = ""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _schema_lines(ann, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            yield f"{prefix}{name} = {default!r}: {field.description or ''}"


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
