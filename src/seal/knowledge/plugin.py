"""The knowledge domain as the command line, the report and the library see it (core/domain.py)."""

from __future__ import annotations

from typing import ClassVar

from seal.core.config import ConfigError
from seal.core.domain import DomainPlugin
from seal.knowledge.data import DataError


class KnowledgePlugin(DomainPlugin):
    name = "knowledge"
    help = "Knowledge incorporation: learn passages from self-written training data."
    contexts_word = "passages"
    group_word = "an article"
    input_errors = (DataError,)
    # --reuse-round1: tables, the other commands and the question writer's endpoint do not touch round 1;
    # answering and judging change its evaluations, not its samples.
    round1_free = ("eval", "cpt", "continual", "teacher")
    samples_free = ("answer", "judge")

    def config_class(self):
        from seal.knowledge.config import KnowledgeConfig

        return KnowledgeConfig

    def contexts(self, config):
        from seal.knowledge.data import load_passages, split_passages
        from seal.knowledge.prompts import load_template

        for style in [config.self_edit.prompt, *config.eval.more_prompts]:
            load_template(style)  # a bad prompt style or template file stops here
        d = config.data
        passages = load_passages(d.source, d.path, d.hub_split)
        train, held = split_passages(passages, d.train_passages, d.eval_passages, config.seed, d.split_by_article)
        # eval.split train: tables on the training passages, to tune a recipe without seeing the held-out ones
        table = train if config.eval.split == "train" else held
        return train, table[:config.eval.max_passages] if config.eval.max_passages else table

    def domain(self, config):
        from seal.core.endpoint import ChatEndpoint, Judge
        from seal.knowledge.domain import KnowledgeDomain

        j = config.judge
        judge = Judge(ChatEndpoint(j.base_url, j.model, j.api_key_env, j.retries, j.timeout_s)) if j.base_url else None
        return KnowledgeDomain(config, judge)

    def training_contexts(self, run, lm, contexts, progress):
        if run.config.reward.questions == "gold":
            return contexts
        from seal.knowledge.learn import self_questioned

        passages = self_questioned(run, lm, contexts, progress)
        if run.config.reward.metric != "teacher":
            return passages
        from seal.knowledge.label_free import teacher_probes

        return teacher_probes(run, lm, passages, progress)

    def evaluate(self, run, domain, held, progress, policy_runs=(), lm=None):
        from seal.knowledge.evaluate import evaluate

        return evaluate(run, domain, held, progress, policy_runs=policy_runs, lm=lm)

    def table(self, run):
        from seal.knowledge.evaluate import table

        return table(run)

    def score_label(self, config):
        from seal.knowledge.evaluate import score_label

        return score_label(config)

    def lora_sections(self, config, command):
        sections = super().lora_sections(config, command)
        if command == "cpt" and config.cpt.update == "lora":
            sections.append(("cpt", config.cpt))
        return sections

    # What each command never reads (a field set there draws a warning; restem --no-eval adds eval).
    unread: ClassVar[dict[str, tuple[str, ...]]] = {
        "generate": ("inner_loop", "answer", "reward", "restem", "eval", "judge", "cpt", "continual", "learn"),
        "restem": ("cpt", "continual", "learn"),
        "evaluate": ("cpt", "continual", "learn"),
        "cpt": ("restem", "eval", "continual", "learn"),
        "continual": ("restem", "eval", "cpt", "learn"),
        "learn": ("restem", "eval", "continual"),
    }

    def check(self, config, command, held):
        if config.eval.recipes and command in ("cpt", "continual", "learn"):
            raise ConfigError(f"eval.recipes: `{command}` trains with its own section's recipe, not the table's "
                              "inner-loop recipes; leave eval.recipes empty")
        if command == "cpt" and not held:
            raise ConfigError("no passages: set data.eval_passages (the passages pooled for continued pretraining)")
        if command == "continual" and config.continual.steps > len(held):
            raise ConfigError(f"continual.steps={config.continual.steps} needs at least that many passages; "
                              f"data.eval_passages gives {len(held)}")

    def show(self, run):
        if run.command != "continual":
            return None
        from seal.knowledge.continual import summary_markdown

        return summary_markdown(run)

    def report(self, run, section):
        if run.command != "continual":
            return False
        from seal.knowledge.report import continual_section

        section.found["continual"] = continual_section(section, run)
        return True

    def compare(self, section, found):
        from seal.knowledge.report import compare_continual

        return compare_continual(section, found)

    def register(self, app):
        from seal.knowledge.cli import register

        register(app, self)


PLUGIN = KnowledgePlugin()
