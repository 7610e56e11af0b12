"""Few-shot ARC as the command line, the report and the library see it (core/domain.py)."""

from __future__ import annotations

from typing import ClassVar

from seal.arc.grids import grid_separator, token_counter
from seal.arc.tasks import TaskError
from seal.core.config import ConfigError
from seal.core.domain import DomainPlugin


class ArcPlugin(DomainPlugin):
    name = "arc"
    help = "Few-shot ARC: the model chooses its own test-time training configuration."
    run_prefix = "arc-"
    contexts_word = "tasks"
    group_word = "a task"
    input_errors = (TaskError,)
    held_fields = ("data.eval_ids",)
    # --reuse-round1: the table and curation do not touch round 1; prediction (views, voting) changes
    # its evaluations, not its samples.
    round1_free = ("eval", "curate")
    samples_free = ("predict",)
    distributes = ("restem", "evaluate", "curate")
    unread: ClassVar[dict[str, tuple[str, ...]]] = {"restem": ("curate",), "evaluate": ("curate",), "curate": ("restem", "eval")}

    def config_class(self):
        from seal.arc.config import ArcConfig

        return ArcConfig

    def contexts(self, config):
        from seal.arc.tasks import configured_tasks

        return configured_tasks(config.data, token_counter(config), grid_separator(config))

    def domain(self, config):
        from seal.arc.domain import ArcDomain

        return ArcDomain(config, grid_separator(config))

    def evaluate(self, run, domain, held, progress, policy_runs=(), lm=None):
        from seal.arc.evaluate import evaluate

        return evaluate(run, domain, held, progress, policy_runs=policy_runs, lm=lm)

    def table(self, run):
        from seal.arc.curate import side_by_side, summary
        from seal.arc.evaluate import table

        runs = getattr(run, "runs", None)  # several: a RunSet
        if runs and any(r.command == "arc-curate" for r in runs):  # screens side by side
            return side_by_side(runs)
        if not runs and run.command == "arc-curate":  # one screen: a task per row, a column per configuration
            return summary(run)
        return table(run)

    def report(self, run, section):
        if run.command != "arc-curate":
            return False
        table = self.table(run)
        section.lines += ["### Screen: success rate by task and configuration", "", table.markdown(), "",
                          *[f"*{n}*" for n in table.notes], ""]
        return True

    def show(self, run):
        if run.command != "arc-curate":
            return None
        table = self.table(run)
        return "\n".join([table.markdown(), "", *table.notes])

    def score_label(self, config):
        from seal.arc.evaluate import SCORE_LABEL

        return SCORE_LABEL

    def check(self, config, command, held):
        grid_separator(config)
        if command == "evaluate" and not held:
            raise ConfigError("no evaluation tasks: set data.eval_ids, or loosen data.max_tokens / data.max_grid")
        if command == "curate":
            from seal.arc.curate import candidates

            if not candidates(config, token_counter(config), grid_separator(config)):
                raise ConfigError(f"no {config.curate.split} tasks to curate: set curate.ids, or loosen "
                                  "data.max_tokens / data.max_grid")

    def pin(self, config):
        from seal.arc.tasks import task_ids

        sources, data = {}, {}
        for field in ("train_ids", "eval_ids"):
            value = getattr(config.data, field)
            if isinstance(value, str):
                sources[f"data.{field}"], data[field] = value, task_ids(value, f"data.{field}")
        if not data:
            return config, {}
        return config.model_copy(update={"data": config.data.model_copy(update=data)}), sources

    def register(self, app):
        from seal.arc.cli import register

        register(app, self)


PLUGIN = ArcPlugin()
