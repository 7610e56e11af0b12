"""How a run starts and resumes, for the command line and the library API alike.

`new_run` is the one way a run directory comes to exist. It checks, in this order and before the
directory exists: the configuration, the data (the domain's contexts), the model name and the LoRA
recipes against the model's layers (read from its configuration, no weights), the domain's own
checks for the command, `--policy` and `--reuse-round1`, and the experiment trackers. A run that
cannot start leaves no directory behind. `open_run` is that, or the reopening of a run directory
with what `--resume` may change (scheduling fields, added held-out contexts), recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from seal.core.config import ConfigError, flat_fields, load_config
from seal.core.domain import Domain, DomainPlugin
from seal.core.progress import console
from seal.core.registry import plugin

created: list[Path] = []  # run directories this process created (the command line removes empty ones after bad input)


@dataclass
class Started:
    run: Any  # core.runs.Run
    train: list
    held: list
    domain: Domain
    plugin: DomainPlugin
    policies: list[Path]  # the --policy run directories, as given when the run started
    reuse: Optional[Path]  # the --reuse-round1 run directory, as given when the run started
    flags: dict = dataclass_field(default_factory=dict)  # the command's own options as the run started (open_run's flags)

    @property
    def policy(self) -> Optional[Path]:
        """The one --policy of a command that takes one."""
        return self.policies[0] if self.policies else None


def check_run(p: DomainPlugin, command: str, config, policy: Optional[Path | list[Path]] = None,
              allow_overlap: bool = False, reuse: Optional[Path] = None) -> tuple[list, list, Domain]:
    """Every check a command needs before its run directory may exist (`policy`: one restem run
    directory, or several); returns (training contexts, held-out contexts, the domain's inner loop)."""
    from seal.core.bank_size import check_memory_budget
    from seal.core.config import InnerLoopBase
    from seal.core.models import meta_model, native_bf16_cpu, pick_device, resolve_checkpoint, resolve_dtype
    from seal.core.training import check_targets, linear_names

    train, held = p.contexts(config)
    shape = meta_model(config.model.name)
    names = linear_names(shape)
    device = pick_device(config.model.device)
    resolve_dtype(config.model.dtype, device, resolve_checkpoint(config.model.name))
    if config.model.precision == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        console.print("[yellow]model.precision bf16 on a CPU without bf16 instructions: the same numbers, much slower "
                      "than fp32 (a run keeps the precision it started with)[/yellow]")
    for field, recipe in p.lora_sections(config, command):
        check_targets(names, recipe, f"{field}.target_modules")
        if isinstance(recipe, InnerLoopBase):
            check_memory_budget(shape, recipe, field, device)
    if config.distributed.workers and command not in p.distributes:
        served = ", ".join(f"`seal {p.name} {c}`" for c in p.distributes)
        raise ConfigError(f"distributed.workers {config.distributed.workers}: `seal {p.name} {command}` runs in this "
                          f"process only (workers serve {served}); set distributed.workers: 0")
    p.check(config, command, held)
    domain = p.domain(config)
    for one in [policy] if isinstance(policy, Path) else policy or []:
        check_policy(p, domain, config, one, held, allow_overlap)
    if reuse is not None:
        reuse_level(p, config, reuse)
    return train, held, domain


def explicit_fields(section: BaseModel, prefix: str = "") -> list[str]:
    """The dotted names of the leaf fields a configuration file or --set gave (not left to defaults)."""
    out = []
    for name in sorted(section.model_fields_set):
        value = getattr(section, name)
        if isinstance(value, BaseModel) and value.model_fields_set:
            out += explicit_fields(value, f"{prefix}{name}.")
        elif not isinstance(value, BaseModel):
            out.append(prefix + name)
    return out


def unread_settings(p: DomainPlugin, command: str, config, also: tuple[str, ...] = ()) -> list[str]:
    """The fields given for this run that `command` never reads (the plugin's `unread`, and `also`)."""
    unread = (*p.unread.get(command, ()), *also)
    return [f for f in explicit_fields(config) if any(f == u or f.startswith(u + ".") for u in unread)]


def warn_unread(p: DomainPlugin, command: str, config, also: tuple[str, ...] = ()) -> None:
    fields = unread_settings(p, command, config, also)
    if fields:
        console.print(f"[yellow]warning: `seal {p.name} {command}` does not read {', '.join(fields)} (set in the "
                      "configuration, ignored by this command)[/yellow]")


# Settings that decide how work is scheduled, not what it computes: --resume may change them (--set).
SCHEDULING = ("inner_loop.max_batch_seconds", "inner_loop.adapters_per_batch", "inner_loop.tokens_per_forward",
              "distributed.workers", "distributed.address", "distributed.cpus_per_worker", "distributed.gpus_per_worker",
              "distributed.start_timeout", "logging")


# The core's fields that do not change round 1's E-step (its samples and evaluations): what --reuse-round1
# may differ in. With other inner-loop or reward settings only the samples are taken (the evaluations are
# redone). Each domain adds its own sections (DomainPlugin.round1_free and samples_free).
SAMPLES_FREE = ("inner_loop", "reward")


ROUND1_FREE = (*SCHEDULING, "runs_dir", "restem.rounds", "restem.algorithm", "restem.rloo_clip", "restem.sft",
               "restem.evaluate_policy", "restem.keep", "restem.min_reward", "restem.min_distinct_2", "restem.coverage_bonus",
               "reward.require_improvement", "reward.baseline")


def restem_run(p: DomainPlugin, path: Path, where: str):
    """The restem run of this domain at `path` (an option's value, named by `where` in errors)."""
    from seal.core.runs import Run

    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{where}: not a run directory (no config.yaml)")
    run = Run.resume(path)
    if run.command != p.run_prefix + "restem":
        raise ConfigError(f"{where}: a '{run.command}' run, not a {p.run_prefix}restem run")
    return run


def reuse_level(p: DomainPlugin, config, source: Path) -> str:
    """--reuse-round1: "all" when `source` (a restem run of this domain) made round 1's E-step with the
    settings of `config`, "samples" when only its inner loop, answering or reward differ (the same
    self-edits, evaluated again); anything else is refused."""
    from seal.core.generation import resolve_precision
    from seal.core.models import pick_device

    where = f"--reuse-round1 {source}"
    other = restem_run(p, source, where)
    mine, theirs = (flat_fields(c) for c in (config, other.config))
    if theirs.get("model.precision") == "auto":  # a run from before precision was pinned: as it would resolve here
        theirs["model.precision"] = resolve_precision("auto", pick_device(other.config.model.device))
    under = lambda name, fields: any(name == f or name.startswith(f + ".") for f in fields)
    round1_free, samples_free = (*ROUND1_FREE, *p.round1_free), (*SAMPLES_FREE, *p.samples_free)
    differ = sorted(n for n in set(mine) | set(theirs) if not under(n, round1_free) and mine.get(n) != theirs.get(n))
    refused = [n for n in differ if not under(n, samples_free)]
    if refused:
        raise ConfigError(f"{where}: its round-1 self-edits were sampled with other settings: "
                          + ", ".join(f"{n}={theirs.get(n)!r} (here {mine.get(n)!r})" for n in refused[:5]))
    return "samples" if differ else "all"


def reuse_round1_copy(run, source: Path) -> int:
    """Copy round 1's E-step records (samples, scores, evaluations; not its M-step) from `source` into
    `run`, or only its samples when the evaluations were made with other settings (`reuse_level`), each
    marked `reused_from`; records `run` already has are kept. Returns how many were copied."""
    from seal.core.runs import Run

    level = reuse_level(plugin(run.config.domain), run.config, source)
    prefix = "round1/" if level == "all" else "round1/samples/"
    copied = 0
    for record in Run.resume(source).records():
        key = record["key"]
        if key.startswith(prefix) and key != "round1/done" and run.get(key) is None:
            fields = {k: v for k, v in record.items() if k not in ("kind", "key", "time")}
            run.append(record["kind"], key, **{**fields, "reused_from": str(source)})
            copied += 1
    return copied


def open_run(p: DomainPlugin, command: str, config_file: Optional[Path], overrides: Optional[list[str]],
             resume: Optional[Path], policy: Optional[Path | list[Path]] = None, allow_overlap: bool = False,
             reuse: Optional[Path] = None, flags: Optional[dict] = None) -> Started:
    """Check everything (see the module's docstring), then create the run directory (`new_run`) or
    reopen it. `flags`: the command's own options that a resume must keep ({name: value}); a new run
    records them in meta.json, and `Started.flags` gives them back, those of the run's start on a resume."""
    from seal.core import tracking
    from seal.core.inner_loop import teacher_cache
    from seal.core.runs import Run

    run_command = p.run_prefix + command
    flags = dict(flags or {})
    policies = [policy] if isinstance(policy, Path) else list(policy or [])
    if resume is None:
        return new_run(p, command, load_config(config_file, overrides or [], domain=p.name), policies, allow_overlap,
                       reuse, flags)
    if config_file:
        raise ConfigError("--resume takes the run's saved configuration; drop --config")
    run = Run.resume(resume)
    if run.command != run_command:
        raise ConfigError(f"--resume {resume}: that is a '{run.command}' run, not '{run_command}'")
    config, changes = rescheduled(run, overrides or [], p if command == "evaluate" else None,
                                  more_rounds=command == "restem")
    policies, allow_overlap, reuse, added = resumed_inputs(run, policies, allow_overlap, reuse,
                                                           more_policies=command == "evaluate")
    flags = started_flags(run, flags)
    train, held, domain = check_run(p, command, config, policies, allow_overlap, reuse)
    tracking.check(config)
    if changes:
        if set(changes) & set(p.held_fields):
            kept_contexts(run, domain, held, p.contexts_word)
        record_change(run, config, changes)
    if added:
        record_policies(run, policies)
    console.print(f"resuming [bold]{run.path}[/bold] ({len(run.records())} records done)")
    domain.teacher_cache = teacher_cache(run.path)  # distillation teachers, kept for a resume
    return Started(run, train, held, domain, p, policies, reuse, flags)


def new_run(p: DomainPlugin, command: str, config, policies: list[Path] = (), allow_overlap: bool = False,
            reuse: Optional[Path] = None, flags: Optional[dict] = None) -> Started:
    """Every check `command` needs on `config` (see the module's docstring), then a new run directory
    holding the configuration as it resolves here and what the command was given. The command line
    and the library API (`seal.start`) both start runs here."""
    from seal.core import tracking
    from seal.core.inner_loop import teacher_cache
    from seal.core.runs import Run

    flags, policies = dict(flags or {}), list(policies)
    config, pinned = pinned_config(p, config)  # a task-list file's ids as they are now, precision as it resolves here
    train, held, domain = check_run(p, command, config, policies, allow_overlap, reuse)
    tracking.check(config)
    warn_unread(p, command, config, ("eval",) if flags.get("eval") is False else ())
    inputs = dict(policy=[str(one) for one in policies], allow_overlap=allow_overlap, reuse_round1=str(reuse) if reuse else None,
                  pinned=pinned, flags=flags)
    run = Run.create(config, p.run_prefix + command, inputs=inputs)
    created.append(run.path)
    console.print(f"run directory: [bold]{run.path}[/bold]")
    domain.teacher_cache = teacher_cache(run.path)  # distillation teachers, kept for a resume
    return Started(run, train, held, domain, p, policies, reuse, flags)


def started_flags(run, defaults: dict) -> dict:
    """The command options a run started with: as meta.json recorded them, else (a run from before they
    were recorded) as its command line gave them (`--no-NAME` for a boolean NAME), else `defaults`."""
    recorded = (run.meta.get("inputs") or {}).get("flags")
    if recorded is not None:
        return {**defaults, **recorded}
    argv = run.meta.get("argv", [])
    return {name: (False if f"--no-{name}" in argv else True if f"--{name}" in argv else value)
            if isinstance(value, bool) else value for name, value in defaults.items()}


def pinned_config(p: DomainPlugin, config) -> tuple[Any, dict[str, str]]:
    """The configuration a new run saves: the domain's task-list files replaced by the ids they hold now
    (`DomainPlugin.pin`), and `model.precision: auto` by what it means on this machine (bf16 autocast
    where the CPU or GPU has native bf16, else fp32), so that a resume elsewhere computes the same
    numbers; with what each pinned field was given as ({field: value}), for meta.json."""
    from seal.core.generation import resolve_precision
    from seal.core.models import pick_device

    config, pinned = p.pin(config)
    if config.model.precision == "auto":
        config = config.model_copy(deep=True)
        config.model.precision = resolve_precision("auto", pick_device(config.model.device))
        pinned = {**pinned, "model.precision": "auto"}
    return config, pinned


def resumed_inputs(run, policies: list[Path], allow_overlap: bool, reuse: Optional[Path],
                   more_policies: bool = False) -> tuple[list[Path], bool, Optional[Path], bool]:
    """The --policy directories, --allow-overlap and --reuse-round1 a resumed run started with: a resume
    without them takes them from meta.json; one with other run directories is refused (its records
    would mix two runs). With `more_policies` (an evaluation), the --policy list may go on after the
    started one: the added runs' rows come after the rows the run has. The last item says whether it did."""
    inputs = run.meta.get("inputs")
    if inputs is None:  # a run from before inputs were kept: its command line says what it was given
        inputs = _argv_inputs(run.meta.get("argv", []))
    started = [Path(one) for one in inputs.get("policy", [])]
    given, had = ([one.resolve() for one in runs] for runs in (policies, started))
    added = more_policies and len(given) > len(had) and given[:len(had)] == had
    if added and started:
        from seal.core.restem import policy_labels

        before, after = policy_labels(started), policy_labels(policies)[:len(started)]
        if before != after:
            raise ConfigError(f"--resume {run.path}: with --policy {policies[-1]} added, the rows of the runs it has "
                              f"would be renamed ({', '.join(repr(b) + ' -> ' + repr(a) for b, a in zip(before, after) if b != a)}): "
                              "start a new evaluation with all of them")
    if policies and given != had and not added:
        was = ", ".join(map(str, started)) or "none"
        more = " (more --policy runs may follow those, in that order)" if more_policies else ""
        raise ConfigError(f"--resume {run.path}: it started with --policy {was}; drop --policy to keep it{more}")
    source = Path(inputs["reuse_round1"]) if inputs.get("reuse_round1") else None
    if reuse is not None and (source is None or reuse.resolve() != source.resolve()):
        raise ConfigError(f"--resume {run.path}: it started with --reuse-round1 {source or 'none'}; drop --reuse-round1")
    return (policies if added else started), allow_overlap or bool(inputs.get("allow_overlap", False)), source, added


def record_policies(run, policies: list[Path]) -> None:
    """Record that a resumed evaluation takes more --policy runs, then write them into its meta.json, so
    that a later --resume without --policy takes them all (a kill between the two: the next resume with
    the same --policy list completes it)."""
    from seal.core.runs import write_atomic

    meta = run.meta
    inputs = meta.get("inputs") or _argv_inputs(meta.get("argv", []))  # a run from before inputs were kept
    now = [str(one) for one in policies]
    run.append("inputs_change", f"inputs/{len(run.records('inputs_change'))}", policy=[inputs.get("policy", []), now])
    meta["inputs"] = {**inputs, "policy": now}  # its other inputs (--allow-overlap, --reuse-round1) kept
    write_atomic(run.path / "meta.json", json.dumps(meta, indent=2))


def _argv_inputs(argv: list[str]) -> dict:
    def values(option: str) -> list[str]:
        return ([argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]
                + [arg.split("=", 1)[1] for arg in argv if arg.startswith(option + "=")])

    return dict(policy=values("--policy"), allow_overlap="--allow-overlap" in argv,
                reuse_round1=next(iter(values("--reuse-round1")), None))


def rescheduled(run, overrides: list[str], evaluation: DomainPlugin | None = None,
                more_rounds: bool = False) -> tuple[Any, dict]:
    """The run's saved configuration with `overrides` of scheduling settings only (SCHEDULING), or, for
    an `evaluation` (the domain's evaluate), also of the fields that choose its held-out contexts
    (`held_fields`, task-list files pinned), or, with `more_rounds` (restem), a larger restem.rounds:
    the finished rounds stay as they are and the run goes on from the last (its evaluate_policy E-step,
    if it made one, is the next round's E-step); with the changes ({field: [before, after]}), which
    `record_change` writes once every check has passed; a field set to the value it had is no change."""
    if not overrides:
        return run.config, {}
    fields = [o.split("=", 1)[0].strip() for o in overrides]
    allowed = (*SCHEDULING, *(evaluation.held_fields if evaluation else ()), *(("restem.rounds",) if more_rounds else ()))
    refused = [f for f in fields if f not in allowed]
    if refused:
        raise ConfigError(f"--resume keeps the run's settings; only {', '.join(allowed)} may change (not {', '.join(refused)})")
    config = load_config(run.path / "config.yaml", overrides)
    if evaluation and set(fields) & set(evaluation.held_fields):
        config, _ = evaluation.pin(config)
    if more_rounds and config.restem.rounds < run.config.restem.rounds:
        raise ConfigError(f"--resume {run.path}: restem.rounds={config.restem.rounds} is fewer than the run's "
                          f"{run.config.restem.rounds}; a resume may add rounds, not drop them")
    before, after = flat_fields(run.config), flat_fields(config)
    return config, {f: [before.get(f), after.get(f)] for f in fields if before.get(f) != after.get(f)}


def record_change(run, config, changes: dict) -> None:
    """Record a resumed run's configuration change, then write the changed configuration to its
    config.yaml (whole or not at all), so the run says how it was run: a kill between the two leaves the
    change recorded and the old configuration, which the next `--resume` with the same change completes."""
    from seal.core.config import dump_config
    from seal.core.runs import write_atomic

    run.append("config_change", f"config/{len(run.records('config_change'))}", changes=changes)
    write_atomic(run.path / "config.yaml", dump_config(config))
    run.config = config


def kept_contexts(run, domain: Domain, held: list, word: str) -> None:
    """Refuse a held-out selection that leaves out a context the run already has results for: a
    resumed evaluation may add contexts, never drop one (its table would silently change meaning)."""
    ids = {domain.context_id(c) for c in held}
    done = {r["context_id"] for r in run.records() if r["key"].startswith("eval/") and "context_id" in r}
    dropped = sorted(done - ids)
    if dropped:
        raise ConfigError(f"--resume {run.path}: the new selection drops {word} the run has results for "
                          f"({', '.join(dropped[:5])}{', ...' if len(dropped) > 5 else ''}); it may only add some")


def check_policy(p: DomainPlugin, domain: Domain, config, policy: Path, held: list, allow_overlap: bool) -> None:
    """A SEAL policy is only scored on the model it was trained from, and (unless allowed) never on
    contexts it was trained on or that share a group (an article) with them."""
    where = f"--policy {policy}"
    run = restem_run(p, policy, where)
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
