"""seal as a Python library: the same runs as the command line, from code.

    import seal

    config = seal.load_config("configs/knowledge-demo.yaml", ["restem.rounds=2"])
    run = seal.start(config)              # a new run directory, after every check the CLI makes
    policy = seal.restem(run)             # the ReST-EM rounds; returns the last round's policy
    table = seal.evaluate(run, policy=run.path)
    print(table.markdown())

    learned = seal.learn(["examples/documents"], "learned/")   # teach it your documents
    print(seal.ask("learned/", "Who was the first keeper of the Velmora lighthouse?"))

Every function works on a `Run` (a run directory): results are written as they finish, and calling
the same function again on `seal.resume(path)` continues where it stopped. Progress goes to the run's
progress.log (pass a `Progress` to see bars). The command line calls these same functions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from seal.core.config import Section
from seal.core.models import LoadedModel
from seal.core.progress import Progress
from seal.core.registry import plugin
from seal.core.runs import Run
from seal.core.tables import Table


def start(config: Section, command: str = "restem", policy: str | Path | list[str | Path] | None = None,
          allow_overlap: bool = False, reuse_round1: str | Path | None = None) -> Run:
    """Check `config` for `command` ("restem", "evaluate", or a domain's own command) as the command
    line does (data, model layers, the domain's checks, `policy`: one restem run directory or several,
    `reuse_round1`: a restem run whose first E-step this one takes), then create a new run directory."""
    from seal.core.starting import new_run

    policies = [] if policy is None else [Path(x) for x in policy] if isinstance(policy, (list, tuple)) else [Path(policy)]
    return new_run(plugin(config.domain), command, config, policies, allow_overlap,
                   Path(reuse_round1) if reuse_round1 else None).run


def resume(path: str | Path) -> Run:
    """Reopen a run directory with its saved configuration."""
    return Run.resume(path)


def _progress(run: Run, progress: Progress | None, show: bool = False):
    """The caller's progress (already started: left running), else lines to the run's progress.log
    (`show`: and bars)."""
    if progress is not None:
        return contextlib.nullcontext(progress)
    return Progress(enabled=show, log=run.path / "progress.log")


def restem(run: Run, lm: LoadedModel | None = None, progress: Progress | None = None) -> LoadedModel:
    """The run's ReST-EM rounds on its training contexts (after taking round 1 from the run it was
    started with `reuse_round1`, if any); returns the model as the last round's policy."""
    from seal.core.distributed import load_run_model
    from seal.core.restem import restem as run_restem
    from seal.core.starting import reuse_round1_copy

    p = plugin(run.config.domain)
    train, _ = p.contexts(run.config)
    with _progress(run, progress) as bars:
        source = (run.meta.get("inputs") or {}).get("reuse_round1")
        if source:  # again on a resume: a kill may have cut the copy short (it keeps what is there)
            bars.log(f"round 1: {reuse_round1_copy(run, Path(source))} records taken from {source}")
        lm = lm or load_run_model(run.config, bars.log)  # with distributed.workers attached
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


@dataclass
class Learned:
    """What `learn` did: the folder `ask` loads, its run directory, and the table of what it learned."""

    path: Path  # the output folder (adapter or merged checkpoint, manifest.json, report.md)
    run: Run | None  # the run directory with every record (None: nothing new to learn)
    table: Table | None  # per document: held-out score before and after, the open-book ceiling
    passages: int = 0
    documents: int = 0
    skipped: list = field(default_factory=list)  # files that could not be read, each with its reason
    known: list[Path] = field(default_factory=list)  # with `add`: documents already in the folder, left out


def learn(docs: list[str | Path], out: str | Path, config: str | Path | None = None, overrides: list[str] = (),
          policy: str | Path | None = None, resume: str | Path | None = None, merge: bool = False, add: bool = False,
          field: str = "text", title_field: str = "title", progress: Progress | None = None,
          show_progress: bool = False) -> Learned:
    """Teach the model documents (`seal learn`): files or folders (.txt, .md, .pdf, .json, .jsonl; `field`
    and `title_field` for JSON) become passages that write their own questions; each passage's best of
    k self-edits (`policy`: a restem run's policy writes them) is chosen on half of its questions, one
    update learns them all, the other half scores it. `out` must not exist, or (`add`) be a folder
    learned before: its new documents are learned into it with its settings. `resume`: the run
    directory of an interrupted call. Progress goes to `progress`, else to the run's progress.log (and,
    `show_progress`, as bars). Returns where it wrote and what it learned."""
    from seal.core.models import load_configured, token_counter
    from seal.core.progress import console
    from seal.core.restem import policy_rounds
    from seal.core.starting import open_run
    from seal.knowledge.documents import read_documents
    from seal.knowledge.learn import check_documents
    from seal.knowledge.learn import learn as learn_passages
    from seal.knowledge.learned import Earlier, LearnError, report_table, write_output

    out, docs = Path(out), [Path(d) for d in docs]
    earlier = Earlier.read(out) if add else None
    if out.exists() and earlier is None:
        raise LearnError(f"--out {out} exists; choose another folder, or learn more into it with --add")
    documents, skipped = read_documents(docs, field, title_field)
    known = []
    if earlier is not None:
        hashes = earlier.known()
        known = [d.path for d in documents if d.sha256 in hashes]
        documents = [d for d in documents if d.sha256 not in hashes]
        if not documents:
            return Learned(out, None, None, skipped=skipped, known=known)
        if config is None and resume is None:
            config = out / "config.yaml"  # learning more keeps the folder's settings
    # learn's default reward is loglik; a resume keeps the run's configuration
    given = None if resume else ([] if earlier else ["reward.metric=loglik"]) + list(overrides or [])
    s = open_run(plugin("knowledge"), "learn", Path(config) if config else None, given, Path(resume) if resume else None,
                 policy=Path(policy) if policy else None, allow_overlap=True)
    cfg = s.run.config
    if earlier is not None:
        before = earlier.manifest["settings"]
        for name, now, then in (("model.name", cfg.model.name, before["model"]["name"]),
                                ("learn.mode", cfg.learn.mode, before["learn"]["mode"])):
            if now != then:
                raise LearnError(f"--add {out}: it was learned with {name}={then!r}, this run has {now!r}")
    if merge and (cfg.learn.mode == "per-document" or earlier is not None):
        raise LearnError("--merge writes one checkpoint: it needs learn.mode pooled and a new folder (no --add)")
    check_documents(s.run, documents)
    for skip in skipped:
        console.print(f"[yellow]skipped[/yellow] {skip.path}: {skip.reason}")
    lm = load_configured(cfg.model)
    if s.policy is not None:  # on a resume: the one the run started with
        for _ in policy_rounds(lm, s.policy):  # the last finished round's policy writes the self-edits
            pass
    with _progress(s.run, progress, show_progress) as bars:
        items, kept = learn_passages(s.run, lm, s.domain, documents, skipped, token_counter(cfg.model.name), bars, earlier)
    table = report_table(s.run, items, earlier)
    table.write(s.run.path, "learned")
    path = write_output(s.run, lm, out, items, kept, str(s.policy) if s.policy else None, merge, earlier)
    return Learned(path, s.run, table, len(items), len(documents), skipped, known)


def ask(folder: str | Path, question: str, base: bool = False) -> str:
    """The answer of a `learn` folder's model to `question`, closed-book (`base`: the model before it
    learned). For many questions, `seal.knowledge.learn.Asker(folder)` loads the model once."""
    from seal.knowledge.learned import Asker

    return Asker(Path(folder)).answer(question, base=base)
