"""The knowledge domain's configuration (`domain: knowledge`, the default): the core's sections plus
the answering, reward, judge, teacher, data, evaluation, CPT and continual sections.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from seal.core.config import (
    ConfigError,
    InnerLoopBase,
    LoraTrainConfig,
    RestemConfig,
    RewardBase,
    RunConfig,
    SamplingBase,
    Section,
    with_changes,
)

# The inner-loop settings of the paper's reference code, kept by name (`preset: reference`).
INNER_LOOP_PRESETS: dict[str, dict[str, Any]] = {
    "reference": dict(rank=32, alpha=64, dropout=0.0, target_modules=["q_proj", "v_proj"], lr=1e-3, epochs=10, batch_size=1),
}


class InnerLoopConfig(InnerLoopBase):
    """One self-edit evaluation: a fresh LoRA trained on the self-edit, then the questions."""

    preset: Literal["reference"] | None = Field(None, description="start from a named recipe; fields set next to it still win")
    split_lines: bool = Field(True, description="one training sequence per self-edit line (else the whole self-edit is one sequence)")
    include_passage: bool = Field(True, description="add the passage itself as one more training sequence")
    max_lines: int = Field(64, ge=1, description="self-edit lines used at most; the rest are dropped and recorded")
    item_format: str = Field("title", description="how each training item is keyed: title = '{title}\\n{line}'; topic = 'Topic: {title}\\n{line}', the key the answer prompt asks after; or a template with {title} and {line}")
    self_edit_items: Literal["lines", "probes"] = Field("lines", description="what a self-edit's lines become: lines = each line a training item after its key (item_format); probes = each line a question, trained as the answer prompt followed by the teacher's own greedy answer with the passage in its prompt, the loss on the answer only (the question-shaped input context distillation is usually given)")
    passage_items: Literal["whole", "sentences"] = Field("whole", description="the passage as one training item, or as one item per sentence (each keyed by item_format)")
    distill_context: str = Field("Topic: {title}\n{passage}\n", description="objective distill or mix: what the teacher reads before each training item (a template with {title} and {passage}); the student reads the item alone")

    @model_validator(mode="after")
    def _templates_have_their_fields(self):
        import string

        for field, text, needs in (("item_format", self.item_format, {"title", "line"}),
                                   ("distill_context", self.distill_context, {"passage"})):
            if field == "item_format" and text in ("title", "topic"):
                continue
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as err:
                raise ValueError(f"inner_loop.{field} {text!r}: not a template ({err})") from None
            allowed = needs | {"title"}
            if not needs <= names or not names <= allowed:
                raise ValueError(f"inner_loop.{field} {text!r}: needs the placeholders {sorted(needs)}"
                                 f" and no others than {sorted(allowed)}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            if data["preset"] not in INNER_LOOP_PRESETS:
                return data  # the Literal check reports it
            return {**INNER_LOOP_PRESETS[data["preset"]], **data}
        return data


class SamplingConfig(SamplingBase):
    prompt: str = Field("implications", description="implications, implications-long, implications-very-long, rewrite, self-qa, or a template file with {title} and {passage}")


class AnswerConfig(Section):
    """Answering a passage's questions without the passage."""

    prompt_style: Literal["completion", "chat"] = Field("completion", description="completion: 'Topic/Question/Answer:' continuation; chat: the chat template")
    max_new_tokens: int = Field(32, ge=1, le=512, description="answer length limit; an answer that hits it is recorded as such")
    batch_size: int = Field(64, ge=1, description="questions answered together (batched inner loop: across the K updated models)")
    max_questions: int | None = Field(None, ge=1, description="questions per passage at most (None: all)")
    distractors: int = Field(8, ge=0, le=64, description="answer discrimination: per question, the gold answer's likelihood is compared with up to this many distractor spans of the same passage (the answers of its other questions, then numbers, dates and names from its text); the share it beats is the question's `discrimination` grade, which priming every token of the passage cannot raise. 0: not measured")


class RewardConfig(RewardBase):
    metric: Literal["em", "f1", "contains", "loglik", "judge", "discrimination", "teacher"] = Field("f1", description="the score of the updated model that is the self-edit's reward, averaged over the passage's questions; em, f1, contains: SQuAD-normalised, max over gold answers; loglik: the geometric-mean per-token probability of a gold answer (exp of its mean token log-probability after the question), max over gold answers; judge: the judge's yes/no; discrimination: the share of distractor spans the best gold answer is more likely than (answer.distractors); teacher: label-free (needs questions: self): loglik of the open-book model's own greedy answers to the passage's self-written questions, as the share of the closed-book to open-book gap closed (knowledge/label_free.py); held-out tables then report loglik on the gold answers")
    baseline: Literal["none", "pre_update", "passage"] = Field("passage", description="what a self-edit is compared with: passage = the model trained on the passage alone, with the same seed in each repeat (one more inner-loop training per passage and repeat, cached); pre_update = the model before any update; none")
    questions: Literal["gold", "self"] = Field("gold", description="the questions a training passage's self-edits are rewarded on in ReST-EM: gold = the data's; self = the selection half of questions the passage writes itself (the `questions` section), recorded once per passage; held-out tables always use the gold questions")
    watch_gold: bool = Field(False, description="with questions: self, also ask a training passage's gold questions after every update and record their reward beside the reward (`watched`), never used to select: `seal knowledge noise` then shows how well the self-written questions rank self-edits by the gold ones")

    @model_validator(mode="after")
    def _watch_needs_self(self):
        if self.metric == "teacher" and self.questions != "self":
            raise ValueError("reward.metric 'teacher' needs reward.questions: self (the questions the open-book model answers)")
        if self.watch_gold and self.questions != "self":
            raise ValueError("reward.watch_gold needs reward.questions: self (gold rewards are the reward already)")
        return self


class JudgeConfig(Section):
    """An LLM judge through an OpenAI-compatible endpoint (unset: no judge column)."""

    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1 or http://localhost:8000/v1")
    model: str = Field("gpt-4.1", description="model name at the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    retries: int = Field(3, ge=0, le=20)
    timeout_s: float = Field(60, gt=0)


class TeacherConfig(Section):
    """Another model whose self-edits form the 'teacher' row of the table (unset: no row)."""

    model: str | None = Field(None, description="a hub id, local directory or .gguf file")
    base_url: str | None = Field(None, description="an OpenAI-compatible endpoint instead of a local model")
    api_model: str = Field("gpt-4.1", description="model name at the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY")
    retries: int = Field(3, ge=0, le=20)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if self.model and self.base_url:
            raise ValueError("set teacher.model or teacher.base_url, not both")
        return self


class DataConfig(Section):
    source: Literal["builtin", "seal-json", "squad", "hub"] = Field("builtin", description="builtin corpus, SEAL per-passage JSON, official SQuAD v1.1 JSON, or a datasets hub id")
    path: str | None = Field(None, description="file path (seal-json, squad) or dataset id (hub)")
    hub_split: str = Field("validation", description="split of a hub dataset")
    train_passages: int = Field(4, ge=0, description="passages the self-edit policy is trained on")
    eval_passages: int = Field(4, ge=0, description="held-out passages for the comparison table")
    split_by_article: bool = Field(True, description="keep training and held-out passages in different articles")


class EvalConfig(Section):
    open_book: bool = Field(True, description="row: the model with no update, each question asked with its passage in the prompt: the ceiling a self-edit is measured against ('gap closed')")
    passage_only: bool = Field(True, description="row: trained on the passage alone")
    passage_sentences: bool = Field(True, description="row: trained on the passage's sentences, one item each, keyed by inner_loop.item_format; the rule-based baseline (nothing written by a model) that self-edits must beat")
    probes: bool = Field(False, description="rows: passage + probes, the base model's questions about the passage (self_edit.prompt probes) and the cloze writer's questions (no model), each trained as question -> the teacher's greedy open-book answer (inner_loop.self_edit_items probes)")
    objectives: list[Literal["lm", "distill", "mix"]] = Field(default_factory=list, description="every trained row once per objective listed, on the same passages, seeds and self-edits, so that rows pair across objectives (the first's rows keep their names, the others' are named '[objective]'); empty: inner_loop.objective alone")
    base_self_edits: bool = Field(True, description="row: passage + the base model's self-edits")
    policy_passage_only: bool = Field(False, description="row per SEAL round: that round's policy trained on the passage alone (one more training per passage and round); its self-edit row minus this one is what the self-edits add, apart from what the policy's weights learned")
    policy_rounds: int = Field(0, ge=0, description="rows for the first N finished rounds of each --policy run (0: all of them), e.g. 1 to compare round-1 policies of runs with different numbers of rounds")
    more_prompts: list[str] = Field(default_factory=list, description="one more row per prompt style (or template file): passage + the base model's self-edits written with it, on the same passages as the self_edit.prompt row, to compare styles in one table")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples (over passages) for the 95% interval")
    max_passages: int | None = Field(None, ge=1, description="a table on the first N of its passages only (None: all), e.g. a quick recipe sweep")
    recipes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="more inner-loop recipes for one table, each a name and the inner_loop fields it changes, e.g. {'lr 3e-3': {lr: 0.003}, 'T 2': {objective: distill, distill: {temperature: 2}}}: every trained row comes once more per recipe, named '[recipe]' (with its objective when the table has several), on the same passages, seeds and self-edits, so that rows pair; a recipe that sets objective trains with that one alone, else once per objective. A recipe sweep in one run, on training passages with split: train")
    split: Literal["held", "train"] = Field("held", description="the passages a table is made on: held = the held-out passages (data.eval_passages); train = the training passages (data.train_passages), to tune a recipe (steps, lr, objective) without ever scoring on the held-out ones")


class CptConfig(LoraTrainConfig):
    """Continued pretraining: one update on the pooled training sequences of all the held-out passages
    (data.eval_passages), then every question without its passage. The defaults are the paper's first
    (LoRA) recipe; its revised one is full fine-tuning: update=full, lr=7e-5, epochs=1."""

    update: Literal["lora", "full"] = Field("lora", description="lora: one adapter (rank, alpha, target_modules); full: every weight of the model")
    rank: int = Field(32, ge=1, le=1024, description="LoRA rank r (update=lora)")
    alpha: float = Field(64, gt=0, description="LoRA alpha (update=lora)")
    lr: float = Field(1e-3, gt=0, le=1, description="peak learning rate (AdamW, linear decay)")
    epochs: int = Field(3, ge=1, le=1000, description="passes over the pooled sequences")
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per optimiser step")
    answer_chunk: int = Field(8, ge=1, description="passages whose questions are answered (and recorded) together")
    gradient_checkpointing: bool = Field(True, description="keep only each decoder layer's input for the backward pass: far less memory for a few percent of speed at CPT's batch shapes (docs/performance.md)")


class QuestionsConfig(Section):
    """Questions a passage writes for itself (`seal learn`): what selects self-edits and scores the result."""

    writer: Literal["cloze", "model"] = Field("cloze", description="cloze: sentences of the passage with a date, number or name blanked out (no model); model: the model writes questions with answers copied from the passage (teacher.model or teacher.base_url when set, else the policy itself)")
    per_passage: int = Field(8, ge=1, le=100, description="questions per passage at most (model: asked for)")
    selection_share: float = Field(0.5, gt=0, lt=1, description="share of a passage's questions that select its self-edit; the rest are held out and only score the result")


class LearnConfig(LoraTrainConfig):
    """`seal learn`: passages from documents, the best of k self-edits each, one update on them all."""

    gradient_checkpointing: bool = Field(True, description="keep only each decoder layer's input for the backward pass of the update: less memory for a slower update (docs/learn.md)")
    max_passage_tokens: int = Field(200, ge=16, le=4096, description="a passage is at most this many tokens of consecutive paragraphs of one section")
    mode: Literal["pooled", "per-document"] = Field("pooled", description="pooled: one adapter for every document (learning more later goes on training it, with replay); per-document: one adapter per document, and `seal ask` routes a question to the adapter of the passage retrieval ranks first (nothing learned before is touched by learning more)")
    replay: float = Field(1.0, ge=0, le=100, description="pooled, learning more later (--add): earlier training sequences replayed per new one, against forgetting")
    k: int = Field(3, ge=1, le=64, description="self-edits sampled per passage; the one whose update best answers the passage's selection questions is kept")
    objective: Literal["lm", "distill", "mix"] | None = Field(None, description="the learned update's loss (settings: inner_loop.distill); None: inner_loop.objective, the one the self-edits were selected under (lm by default: at 135M distillation taught no more than the LM loss, and SEAL over it no more than the base model's self-edits; docs/results/update.md, docs/results/knowledge.md)")
    rank: int = Field(32, ge=1, le=1024, description="LoRA rank r of the learned update")
    alpha: float = Field(64, gt=0, description="LoRA alpha of the learned update")
    epochs: int = Field(3, ge=1, le=1000, description="passes over the pooled sequences of every passage")
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per optimiser step")


REMEDIES = ("none", "replay", "kl", "orthogonal", "route")


class ContinualConfig(Section):
    """Sequential self-edits: T passages one after another, the questions of all seen passages after each."""

    steps: int = Field(4, ge=1, le=1000, description="T: self-edits applied one after another in each sequence")
    sequences: int = Field(2, ge=1, le=1000, description="S: seeded sequences of T passages drawn from the held-out passages")
    mode: Literal["merge", "stack"] = Field("merge", description="merge: fold each step's adapter into the weights; stack: keep the adapters, all active")
    remedies: list[Literal["none", "replay", "kl", "orthogonal", "route"]] = Field(
        default_factory=lambda: ["none"],
        description="none: plain sequential updates; replay: also train on earlier self-edits; kl: KL to the previous "
                    "model on earlier self-edits; orthogonal: penalise overlap of the new LoRA's A with earlier ones; "
                    "route: one adapter per passage, each question routed to one by retrieval")
    replay_ratio: float = Field(1.0, gt=0, le=100, description="replay: earlier sequences added per new training sequence")
    kl_weight: float = Field(1.0, gt=0, description="kl: weight of the KL term")
    kl_batch: int = Field(4, ge=1, description="kl: earlier sequences per optimiser step for the KL term")
    orthogonal_weight: float = Field(1.0, gt=0, description="orthogonal: weight of sum ||A_new A_old^T||^2 over layers and earlier steps")
    orthogonal_init: bool = Field(False, description="orthogonal: also start each new A orthogonal to the earlier ones (projected), so the penalty starts at 0; false: from a random A, as in O-LoRA")
    keep_adapters: bool = Field(False, description="keep every step's adapter in the run directory (they are always kept until their sequence ends, for --resume)")


class KnowledgeConfig(RunConfig):
    domain: Literal["knowledge"] = Field("knowledge", description="the experiment this configuration is for")
    data: DataConfig = Field(default_factory=DataConfig)
    self_edit: SamplingConfig = Field(default_factory=SamplingConfig)
    inner_loop: InnerLoopConfig = Field(default_factory=InnerLoopConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    restem: RestemConfig = Field(default_factory=RestemConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    cpt: CptConfig = Field(default_factory=CptConfig)
    continual: ContinualConfig = Field(default_factory=ContinualConfig)
    questions: QuestionsConfig = Field(default_factory=QuestionsConfig)
    learn: LearnConfig = Field(default_factory=LearnConfig)

    @model_validator(mode="after")
    def _judge_has_an_endpoint(self) -> KnowledgeConfig:
        if self.reward.metric == "judge" and not self.judge.base_url:
            # every reward would be missing: no self-edit kept, nothing trained, and nothing said
            raise ValueError("reward.metric 'judge' needs judge.base_url (an OpenAI-compatible endpoint)")
        if self.reward.metric == "discrimination" and not self.answer.distractors:
            raise ValueError("reward.metric 'discrimination' needs answer.distractors > 0")
        for name in self.eval.recipes:
            try:
                recipe_inner_loop(self.inner_loop, self.eval.recipes, name)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return self


def recipe_inner_loop(inner_loop: InnerLoopConfig, recipes: dict[str, dict], name: str) -> InnerLoopConfig:
    """The inner loop of eval.recipes[name]: `inner_loop` with the recipe's changes, validated."""
    changes = recipes[name]
    if not isinstance(changes, dict):
        raise ConfigError(f"eval.recipes.{name}: expected the inner_loop fields it changes, got {changes!r}")
    return with_changes(inner_loop, changes, f"eval.recipes.{name}")


