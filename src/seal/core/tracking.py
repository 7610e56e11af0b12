"""Experiment trackers: what a run records, streamed to TensorBoard, Weights & Biases or MLflow as it
is written (`logging.backend`), so that a long run can be watched where researchers watch runs.

The run's records (runs.py) stay the source of truth. Every record a run appends is handed to its
trackers once, at the step that is its place among the run's records, so a resumed run continues the
same step axis and logs only what it adds. What a record becomes:

- its numbers, as `KIND/FIELD` scalars (`self_edit_eval/reward`, `self_edit_eval/train/last_loss`, ...),
  identifiers (round, repeat, sample, seed, step) left out; with training stats, `KIND/tokens_per_s`;
- a finished ReST-EM round (`round`), also its M-step losses (`round/sft/...`) and the learning curve
  so far (`curve/...`, the row of the policy that round sampled with: core/curves.py);
- the process's memory at that moment (`system/rss_gib`, `system/peak_rss_gib`);
- a printed comparison table (`track_table`), each row's score as `table/ROW` and the table as text.

Trackers are optional dependencies, imported only when configured; `check` names a missing one
before any work starts. Nothing a tracker does can fail a run: an error while logging is printed
once and that tracker is dropped.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import math
import os
import re
import resource
import sys
from typing import TYPE_CHECKING

from seal.core.config import flat_fields
from seal.core.errors import ConfigError

if TYPE_CHECKING:
    from seal.core.runs import Run
    from seal.core.tables import Table

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
IDS = {"round", "repeat", "sample", "seed", "step", "sequence"}  # identifiers, not measurements


def check(config) -> None:
    """A one-line error for a configured tracker whose package is not installed."""
    for name in config.logging.trackers:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"logging.backend {name}: the package is not installed (pip install {INSTALL[name]})")


def numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """The record's finite numbers (nested sections flattened with /), identifiers left out."""
    out = {}
    for field, value in record.items():
        if field in IDS or field in ("time", "kind", "key"):
            continue
        if isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
            out[prefix + field] = float(value)
        elif isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{field}/"))
    return out


def memory() -> dict[str, float]:
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"system/rss_gib": now / 2**30, "system/peak_rss_gib": peak / 2**30}


def metrics_of(record: dict) -> dict[str, float]:
    """The scalars one record becomes (see the module's docstring), without the curve and memory."""
    kind = record["kind"]
    out = {f"{kind}/{name}": value for name, value in numbers(record).items()}
    train = record.get("train") or record.get("sft")
    if isinstance(train, dict) and train.get("tokens") and train.get("seconds"):
        out[f"{kind}/tokens_per_s"] = train["tokens"] / train["seconds"]
    return out


def curve_metrics(run: Run, round_done: int) -> dict[str, float]:
    """The learning curve's row for the policy that round `round_done` sampled with."""
    from seal.core.curves import learning_curve

    rows = [r for r in learning_curve(run, bootstrap=200).rows if r["round"] == round_done - 1]
    out = {}
    for row in rows:
        for column, value in row.items():
            name = "curve/" + re.sub(r"[^\w]+", "_", column).strip("_")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[name] = float(value)
            elif isinstance(value, tuple) and len(value) == 3 and math.isfinite(value[0]):  # a paired difference
                out[name] = float(value[0])
    return out


class TensorBoard:
    def __init__(self, run: Run):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.path / "tensorboard"), flush_secs=10)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.writer.add_text(tag, markdown, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, run: Run):
        import wandb

        cfg = run.config.logging
        self.wandb = wandb
        self.run = wandb.init(project=cfg.project, name=run.path.name, id=re.sub(r"[^\w-]", "-", run.path.name),
                              dir=str(run.path), mode=cfg.wandb_mode, resume="allow",
                              config=run.config.model_dump(mode="json"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.run.log({tag: self.wandb.Html(f"<pre>{markdown}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """Through MlflowClient, not the fluent API's one active run, so that several runs in one process
    (the library API) each log to their own."""

    def __init__(self, run: Run):
        import time

        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        cfg = run.config.logging
        if cfg.mlflow_uri is None:  # a file store in the run directory, which needs no server nor database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=cfg.mlflow_uri or (run.path / "mlruns").resolve().as_uri())
        self.metric, self.clock = Metric, time
        known = run.path / "mlflow_run_id"  # a resumed run logs into the same mlflow run
        if known.is_file():
            self.run_id = known.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(cfg.project)
        experiment = found.experiment_id if found else self.client.create_experiment(cfg.project)
        self.run_id = self.client.create_run(experiment, run_name=run.path.name).info.run_id
        known.write_text(self.run_id)
        params = [Param(k, str(v)[:250]) for k, v in flat_fields(run.config).items()]  # mlflow caps a parameter's length
        for start in range(0, len(params), 100):  # mlflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def scalars(self, values: dict[str, float], step: int) -> None:
        now = int(self.clock.time() * 1000)
        metrics = [self.metric(re.sub(r"[^\w./ -]", "_", k), v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.client.log_text(self.run_id, markdown, f"{tag}-{step}.md")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


BACKENDS = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": MLflow}


class Trackers:
    """The configured trackers of one run; `record` is called by Run.append with each new record."""

    def __init__(self, run: Run):
        self.run = run
        self.backends = {}
        for name in run.config.logging.trackers:
            try:
                self.backends[name] = BACKENDS[name](run)
            except Exception as err:  # a tracker never stops a run
                print(f"warning: logging.backend {name} could not start ({type(err).__name__}: {err}); "
                      "the run goes on without it", file=sys.stderr)
        if self.backends:
            atexit.register(self.close)

    def _each(self, method: str, *args) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, method)(*args)
            except Exception as err:
                print(f"warning: logging.backend {name} failed ({type(err).__name__}: {err}); "
                      "the run goes on without it", file=sys.stderr)
                del self.backends[name]

    def record(self, record: dict, step: int) -> None:
        if not self.backends:
            return
        values = metrics_of(record) | memory()
        if record["kind"] == "round" and isinstance(record.get("round"), int):
            values |= curve_metrics(self.run, record["round"])
        self._each("scalars", values, step)

    def table(self, name: str, table: Table, step: int) -> None:
        """A comparison table's rows (each row's score) and its markdown, at `step`; a table printed again
        unchanged (a resume with nothing new, a reprint) is not logged again."""
        if not self.backends or not table.rows:
            return
        seen = self.run.path / "tracked_tables.json"
        done = json.loads(seen.read_text()) if seen.is_file() else {}
        digest = hashlib.sha1(table.markdown().encode()).hexdigest()
        if done.get(name) == digest:
            return
        label = lambda row: next((str(row[k]) for k in ("condition", "policy", "name") if row.get(k) is not None), "row")
        values = {f"table/{name}/{label(row)}": float(row[table.score]) for row in table.rows
                  if isinstance(row.get(table.score), (int, float)) and math.isfinite(row[table.score])}
        self._each("scalars", values, step)
        self._each("text", f"table/{name}", table.markdown(), step)
        seen.write_text(json.dumps(dict(done, **{name: digest})))

    def close(self) -> None:
        self._each("close")
        self.backends = {}
