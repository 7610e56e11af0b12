"""`seal arc curate`: which tasks can test-time training solve at all, and with which configuration.

The paper evaluates on tasks that TTT with a good hand-made configuration solves, and asks how often
the model's own configurations do. Curation screens candidate tasks (the shortest of a split within
the size limits, or given ids) with named TTT configurations (`curate.configurations`), each trained
`curate.repeats` times with its own seed (every configuration of a task shares the seed of a repeat,
so they are compared on equal terms), through the same batched inner loop as ReST-EM. Every training
is a record; `--resume` redoes nothing.

The result: a table (task by configuration, success rate over the repeats; the share of the
configurations that solve the task at least once) and a task-list file that `data.eval_ids` or
`data.train_ids` accept. For evaluation (`curate.purpose: eval`) it lists the tasks an oracle solves
in at least `curate.min_rate` of its repeats; for training (`purpose: train`) the tasks that some
configurations solve and others do not, whose self-edits therefore get rewards that differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from seal.arc.config import ArcConfig
from seal.arc.domain import ArcDomain
from seal.arc.tasks import Task, TaskError, load_split, select, task_ids
from seal.core.config import flat_fields
from seal.core.errors import ConfigError
from seal.core.models import LoadedModel
from seal.core.progress import Progress
from seal.core.restem import EvalJob, evaluate_jobs
from seal.core.runs import Run
from seal.core.tables import Column, Table

TASK_LIST = "task-list.json"
RATE = "rate: "  # a configuration's column key: its name alone could be "oracle", a column of its own


def candidates(config: ArcConfig, count=None, sep: str = "") -> list[Task]:
    """The tasks to screen: `curate.ids`, or the `curate.candidates` shortest of the split within the
    size limits (training tasks left out when screening the evaluation split)."""
    c, d = config.curate, config.data
    exclude = set(task_ids(d.train_ids, "data.train_ids") or []) if c.split == "eval" else set()
    return select(load_split(d, c.split), c.ids, n=c.candidates, max_tokens=d.max_tokens, max_grid=d.max_grid,
                  exclude=exclude, count=count, sep=sep)


def curate(run: Run, lm: LoadedModel, domain: ArcDomain, tasks: list[Task], progress: Progress) -> Table:
    """Train every (task, configuration) `curate.repeats` times (resuming what is recorded); the table."""
    c = run.config.curate
    jobs = [EvalJob(f"curate/{name}/{task.id}", task, json.dumps(conf), dict(reward=None), ("curate", name, task.id),
                    dict(configuration=name, context_id=task.id), common_parts=("curate", task.id))
            for task in tasks for name, conf in c.configurations.items()]
    progress.start("evals", f"curation: {len(tasks)} tasks x {len(c.configurations)} configurations", len(jobs) * c.repeats)
    evaluate_jobs(run, lm, domain, jobs, progress, repeats=c.repeats)
    return summary(run)


def rates(run: Run) -> dict[str, dict[str, float]]:
    """{task: {configuration: success rate over its recorded repeats}}, tasks in the order first recorded."""
    solved: dict[str, dict[str, list[float]]] = {}
    for record in run.records("self_edit_eval"):
        if record["key"].startswith("curate/"):
            solved.setdefault(record["context_id"], {}).setdefault(record["configuration"], []).append(record["reward"])
    return {t: {name: sum(v) / len(v) for name, v in by.items()} for t, by in solved.items()}


def summary(run: Run) -> Table:
    c = run.config.curate
    names = list(c.configurations)
    rows = []
    for task, by in rates(run).items():
        oracle = max(c.oracles, key=lambda o: (by.get(o, 0.0), -c.oracles.index(o)))
        rows.append({"task": task, **{RATE + n: by.get(n) for n in names},
                     "share": sum(by.get(n, 0.0) > 0 for n in names) / len(names),
                     "oracle": oracle if by.get(oracle, 0.0) > 0 else None, "oracle rate": by.get(oracle, 0.0)})
    columns = [Column("task", kind="text"), *[Column(RATE + n, n, digits=2) for n in names],
               Column("share", "share of configurations solving", digits=2), Column("oracle", "best oracle", kind="text"),
               Column("oracle rate", digits=2)]
    listed = task_list(run, rows)
    why = (f"an oracle solves >= {c.min_rate} of its repeats" if c.purpose == "eval"
           else "solved by some configurations, not all")
    notes = [f"{len(listed['tasks'])} of {len(rows)} tasks listed for {c.purpose} ({why})"]
    return Table(columns, rows, "share", "share of configurations solving", notes=notes)


# Fields that only choose which tasks are screened, or where the run goes: not a setting a column is
# labelled by when screens are put side by side.
SELECTING = ("curate.ids", "curate.candidates", "curate.split", "curate.purpose", "runs_dir", "data.")


def side_by_side(runs: list[Run]) -> Table:
    """Several screens as one table: a task per row, a column per (run, configuration) with its success
    rate ("-": the run did not screen the task), each column named by its configuration and the settings
    its run differs in from the others (e.g. "oracle (inner_loop.max_examples=16)"), or by the run's
    directory when only the screened tasks differ."""
    for run in runs:
        if run.command != "arc-curate":
            raise ConfigError(f"{run.path}: an {run.command} run; screens are put side by side with other curation runs only")
    settings = [flat_fields(run.config) for run in runs]
    differ = sorted(k for k in set().union(*settings) if len({repr(s.get(k)) for s in settings}) > 1
                    and not k.startswith(SELECTING))
    columns, cells = [Column("task", kind="text")], {}
    for n, (run, flat) in enumerate(zip(runs, settings)):
        label = ", ".join(f"{k}={flat.get(k)}" for k in differ) or run.path.name
        for task, by in rates(run).items():
            for name, rate in by.items():
                cells.setdefault(task, {})[f"{n}: {name}"] = rate
        columns += [Column(f"{n}: {name}", f"{name} ({label})", digits=2) for name in run.config.curate.configurations]
    rows = [{"task": task, **by, "kind": "oracle", "round": None} for task, by in cells.items()]
    notes = [f"{n}: {run.path}" + (f" ({', '.join(f'{k}={s.get(k)}' for k in differ)})" if differ else "")
             for n, (run, s) in enumerate(zip(runs, settings))]
    return Table(columns, rows, columns[1].key, "success rate over the repeats", notes=notes)


def task_list(run: Run, rows: list[dict]) -> dict:
    """The tasks the purpose asks for, best first."""
    c = run.config.curate
    if c.purpose == "eval":
        chosen = [r for r in rows if r["oracle"] and r["oracle rate"] >= c.min_rate]
        tasks = [dict(id=r["task"], configuration=r["oracle"], rate=r["oracle rate"], share=r["share"]) for r in chosen]
    else:
        chosen = [r for r in rows if 0 < r["share"] < 1]
        tasks = [dict(id=r["task"], share=r["share"],
                      solved_by=[n for n in c.configurations if (r.get(RATE + n) or 0) > 0]) for r in chosen]
    return dict(purpose=c.purpose, split=c.split, source=run.config.data.source, version=run.config.data.version,
                repeats=c.repeats, tasks=best_first(c.purpose, tasks))


def best_first(purpose: str, tasks: list[dict]) -> list[dict]:
    """Evaluation tasks by the oracle's success rate; training tasks by how near half of the
    configurations solve them (their self-edits' rewards differ most); then by id."""
    if purpose == "eval":
        return sorted(tasks, key=lambda t: (-t["rate"], t["id"]))
    return sorted(tasks, key=lambda t: (abs(t["share"] - 0.5), t["id"]))


def merge_task_lists(paths: list[Path]) -> dict:
    """One task list from those of several curation runs (run directories or task-list files), e.g. a
    screen done in passes. They must agree on purpose, split, source and version; a task listed twice
    keeps its first entry. Each task says which list it came from (a merged list's tasks keep theirs)."""
    merged, seen, sources = None, set(), []
    for given in paths:
        path = given / TASK_LIST if given.is_dir() else given
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise TaskError(f"{path}: not a readable task list ({err})") from None
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            raise TaskError(f"{path}: not a task list written by seal arc curate (no 'tasks')")
        if not all(isinstance(t, dict) and isinstance(t.get("id"), str) for t in data["tasks"]):
            raise TaskError(f"{path}: every task must be an object with an 'id'")
        head = {k: data.get(k) for k in ("purpose", "split", "source", "version")}
        if merged is None:
            merged = dict(head, repeats=data.get("repeats"), tasks=[])
        for key, value in head.items():
            if value != merged[key]:
                raise TaskError(f"{path}: {key} is {value!r}, but {paths[0]} has {merged[key]!r}")
        if data.get("repeats") != merged["repeats"]:
            merged["repeats"] = None  # the lists differ: each task's entry keeps its own
        sources += data.get("merged_from") or [str(path)]
        for task in data["tasks"]:
            if task["id"] not in seen:
                seen.add(task["id"])
                merged["tasks"].append({"id": task["id"], "repeats": data.get("repeats"), "list": str(path), **task})  # a merged list's own
    merged["tasks"] = best_first(merged["purpose"], merged["tasks"])
    merged["merged_from"] = sources
    return merged


def write_task_list(run: Run, table: Table) -> Path:
    return save_task_list(run.path / TASK_LIST, task_list(run, table.rows))


def save_task_list(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def ids_field(purpose: str) -> str:
    """The configuration field a task list of this purpose is for."""
    return "data.eval_ids" if purpose == "eval" else "data.train_ids"
