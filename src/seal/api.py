"""seal as a Python library: the same runs as the command line, from code.

    import seal

    config = seal.load_config("configs/knowledge-demo.yaml", ["restem.rounds=2"])
    run = seal.start(config)              # a new run directory, after every check the CLI makes
    policy = seal.restem(run)             # the ReST-EM rounds; returns the last round's policy
    table = seal.evaluate(run, policy=run.path)
    print(table.markdown())

Every function works on a `Run` (a run directory): results are written as they finish, and calling
the same function again on `seal.resume(path)` continues where it stopped. Progress goes to the run's
progress.log (pass a `Progress` to see bars).
"""

from __future__ import annotations

from pathlib import Path

from seal.core.config import Section
from seal.core.models import LoadedModel
from seal.core.progress import Progress
from seal.core.registry import plugin
from seal.core.runs import Run
from seal.core.tables import Table


def start(config: Section, command: str = "restem", policy: str | Path | None = None,
          allow_overlap: bool = False) -> Run:
    """Check `config` for `command` ("restem", "evaluate", or a domain's own command) as the command
    line does (data, model layers, the domain's checks, `policy`), then create a new run directory."""
    from seal.core.commands import check_run, pinned_config

    p = plugin(config.domain)
    config, pinned = pinned_config(p, config)  # a task-list file's ids as they are now, precision as it resolves here
    check_run(p, command, config, Path(policy) if policy else None, allow_overlap)
    inputs = dict(policy=[str(policy)] if policy else [], allow_overlap=allow_overlap, reuse_round1=None, pinned=pinned)
    return Run.create(config, p.run_prefix + command, inputs=inputs)


def resume(path: str | Path) -> Run:
    """Reopen a run directory with its saved configuration."""
    return Run.resume(path)


def _progress(run: Run, progress: Progress | None) -> Progress:
    return progress or Progress(enabled=False, log=run.path / "progress.log")


def restem(run: Run, lm: LoadedModel | None = None, progress: Progress | None = None) -> LoadedModel:
    """The run's ReST-EM rounds on its training contexts; returns the model as the last round's policy."""
    from seal.core.distributed import load_run_model
    from seal.core.restem import restem as run_restem

    p = plugin(run.config.domain)
    train, _ = p.contexts(run.config)
    with _progress(run, progress) as bars:
        lm = lm or load_run_model(run.config, bars.log)  # with distributed.workers attached, as the CLI's
        run_restem(run, lm, run_domain(run), p.training_contexts(run, lm, train, bars), bars)
    return lm


def evaluate(run: Run, policy: str | Path | list[str | Path] | None = None, lm: LoadedModel | None = None,
             progress: Progress | None = None) -> Table:
    """The comparison table on the held-out contexts (with `policy`'s rounds: a restem run directory, or
    a list of them),
    starting from the base model (or `lm`); also written to the run's table.md and table.csv."""
    p = plugin(run.config.domain)
    _, held = p.contexts(run.config)
    policies = [] if policy is None else [Path(x) for x in policy] if isinstance(policy, (list, tuple)) else [Path(policy)]
    with _progress(run, progress) as bars:
        result = p.evaluate(run, run_domain(run), held, bars, policy_runs=policies, lm=lm)
    result.write(run.path)
    return result


def run_domain(run: Run):
    """The run's domain, caching its distillation teachers in the run directory."""
    from seal.core.inner_loop import teacher_cache

    domain = plugin(run.config.domain).domain(run.config)
    domain.teacher_cache = teacher_cache(run.path)
    return domain


def table(run: Run) -> Table:
    """The comparison table of a run, from its records alone."""
    return plugin(run.config.domain).table(run)
