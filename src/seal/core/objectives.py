"""The losses a LoRA update trains with, one registered class each, shared by both training loops.

`training.train` (one PEFT adapter, padded batches) and `multi_lora.train_bank` (K adapters, packed
rows) both reduce a forward pass to its *target tokens* (every position that predicts a label, in
row-major order, each with the example it belongs to) and hand them to the objective, which returns
one loss per target token. Both loops then weight each token by the same coefficient
(`coefficients`): a mean over the tokens of a step's batch, or, for `per_example` objectives, a mean
over each example's tokens and then over the batch's examples. So an objective is written once and
the batched inner loop equals the one-at-a-time loop for every objective (tested).

Objectives:
- `lm`: the negative log-likelihood of each target token (the language-modelling loss).
- `weighted`: each example's mean NLL times its `weight` (RLOO's advantage).
- `clipped`: PPO's clipped surrogate with the example's weight as its advantage, against `reference`.
- `distill`: the KL divergence from a teacher's next-token distribution to the student's, over the
  teacher's top-k tokens and one bucket for the rest of the vocabulary (`teacher_targets` computes the
  teacher's side once per example, without gradient).
- `mix`: `distill` plus `mix` times `lm`.

A new objective is a subclass of `Objective` with a `name`, registered with `@register`, whose
settings (if any) come from its configuration section (see `make_objective`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from seal.core.examples import Example, TeacherDist
from seal.core.faults import crash_point
from seal.core.generation import autocast, half_weights

LOGIT_CHUNK = 1024  # target positions whose vocabulary logits exist at one time, in training
TAIL_FLOOR = -1e4  # the log of an empty tail bucket (exp gives exactly 0 in fp32)
TAIL_EPS = 1e-6  # a tail lighter than this is empty


@dataclass
class Targets:
    """The target tokens of one forward pass, in row-major order."""

    hidden: torch.Tensor  # N x H: the hidden states that predict them
    tokens: torch.Tensor  # N: the target token ids
    example: torch.Tensor  # N: the index (into `examples`) of the example each token belongs to
    examples: Sequence[Example]  # in the order their tokens appear
    head: torch.nn.Module  # the output layer

    def per_example(self, values: list[float]) -> torch.Tensor:
        """One value per example, broadcast to its tokens."""
        return torch.tensor(values, device=self.hidden.device, dtype=torch.float32)[self.example]


def target_count(example: Example) -> int:
    """Target tokens of an example (its first token is never one: nothing comes before it)."""
    return sum(1 for label in example.labels[1:] if label != -100)


def coefficients(batch: Sequence[Example], per_example: bool) -> list[float]:
    """The weight of each target token of one step's batch (in order) in that step's loss: 1/N over the
    batch's N target tokens, or, `per_example`, 1/(n_e * B) over example e's n_e tokens and B examples."""
    counts = [target_count(e) for e in batch]
    if per_example:
        return [1.0 / (n * len(batch)) for n in counts for _ in range(n)]
    total = max(1, sum(counts))
    return [1.0 / total] * sum(counts)


def chunked(fn, head: torch.nn.Module, hidden: torch.Tensor, *per_token: torch.Tensor,
            chunk: int | None = None) -> torch.Tensor:
    """fn(fp32 logits, *per_token chunks) -> one value per row, over `hidden` (N x H) `chunk` rows at a
    time. Under autograd each chunk is checkpointed: its vocabulary logits are freed after the forward
    pass and computed again in the backward pass, so at most one chunk of logits (chunk x vocabulary) is
    alive. At batch 8 x 512 tokens the whole logits of the embedded model would be 0.8 GB, and their
    softmax as much again."""
    if not len(hidden):
        return hidden[:, 0].float() * 0  # empty, but part of the graph
    chunk = chunk or LOGIT_CHUNK
    call = lambda h, *xs: fn(head(h).float(), *xs)
    parts = []
    for i in range(0, len(hidden), chunk):
        args = (hidden[i:i + chunk], *(x[i:i + chunk] for x in per_token))
        if torch.is_grad_enabled() and hidden.requires_grad:
            parts.append(checkpoint(call, *args, use_reentrant=False))
        else:
            parts.append(call(*args))
    return torch.cat(parts)


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def target_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
               chunk: int | None = None) -> torch.Tensor:
    """Negative log-likelihood of each of `targets` (N) from the hidden states that predict them."""
    return chunked(_nll, head, hidden, targets, chunk=chunk)


def bucket_kl(logits: torch.Tensor, ids: torch.Tensor, t_logp: torch.Tensor, t_tail: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Per row: KL(teacher || student) over the teacher's top-k tokens `ids` (their log-probabilities
    `t_logp`, at `temperature`) plus one bucket for every other token (log mass `t_tail`), the student's
    distribution being softmax(logits / temperature) grouped the same way; times temperature²."""
    logq = torch.log_softmax(logits / temperature, dim=-1)
    q_top = logq.gather(-1, ids)
    q_tail = torch.log(-torch.expm1(torch.logsumexp(q_top, dim=-1).clamp(max=-TAIL_EPS)))
    kl = (t_logp.exp() * (t_logp - q_top)).sum(-1) + t_tail.exp() * (t_tail - q_tail)
    return kl * temperature ** 2


def tail_log_mass(top_logp: torch.Tensor) -> torch.Tensor:
    """log(1 - the sum of the top-k probabilities) per row, from their log-probabilities: the mass of the
    rest of the vocabulary, computed as the student's is (so that equal distributions give a KL of
    exactly 0), without a copy of the vocabulary row; TAIL_FLOOR where the top-k hold all but TAIL_EPS
    of it (a top-k of the whole vocabulary: the tail is empty)."""
    lse = torch.logsumexp(top_logp, dim=-1)
    return torch.where(lse > -TAIL_EPS, torch.full_like(lse, TAIL_FLOOR), torch.log(-torch.expm1(lse.clamp(max=-TAIL_EPS))))


# --- the objectives ---------------------------------------------------------------------------------
class Objective:
    """A loss per target token. `per_example`: its tokens are averaged within each example first (see
    `coefficients`); `needs_teacher`: every example must carry `teacher` (see `teacher_targets`)."""

    name: ClassVar[str]
    per_example: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False

    def token_loss(self, t: Targets) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """What is recorded with an update trained with it."""
        return dict(name=self.name)


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


@register
class LanguageModelling(Objective):
    name = "lm"

    def token_loss(self, t: Targets) -> torch.Tensor:
        return target_nll(t.head, t.hidden, t.tokens)


@register
class Weighted(Objective):
    """Each example's mean token NLL times its weight: with advantages as weights, a policy-gradient step."""

    name = "weighted"
    per_example = True

    def token_loss(self, t: Targets) -> torch.Tensor:
        return target_nll(t.head, t.hidden, t.tokens) * t.per_example([e.weight for e in t.examples])


@register
class Clipped(Objective):
    """PPO's clipped surrogate with each example's weight as its advantage A: per target token, with r =
    p / p_ref its probability over that under the policy that wrote it (the example's `reference` NLLs),
    -min(r A, clip(r, 1 - clip, 1 + clip) A). At r = 1 its gradient is `weighted`'s; a token whose ratio
    left [1 - clip, 1 + clip] in the direction its advantage pushes gives no gradient."""

    name = "clipped"
    per_example = True

    def __init__(self, clip: float):
        self.clip = clip

    def token_loss(self, t: Targets) -> torch.Tensor:
        nll = target_nll(t.head, t.hidden, t.tokens)
        reference = torch.tensor([v for e in t.examples for v in e.reference], device=nll.device)
        ratio = torch.exp(reference - nll)
        advantage = t.per_example([e.weight for e in t.examples])
        return -torch.minimum(ratio * advantage, ratio.clamp(1 - self.clip, 1 + self.clip) * advantage)

    def describe(self) -> dict:
        return dict(name=self.name, clip=self.clip)


@register
class Distill(Objective):
    """Context distillation: the student (no context) is pulled toward the teacher (context in its
    prompt) on every target token, over the teacher's top-k tokens plus the tail bucket."""

    name = "distill"
    needs_teacher = True

    def __init__(self, top_k: int = 20, temperature: float = 1.0, mix: float = 0.0, skip_tokens: int = 0):
        self.top_k, self.temperature, self.mix, self.skip_tokens = top_k, temperature, mix, skip_tokens

    def teacher_tensors(self, t: Targets):
        device = t.hidden.device
        missing = [i for i, e in enumerate(t.examples) if e.teacher is None]
        if missing:
            raise ValueError(f"objective {self.name}: {len(missing)} examples have no teacher distribution")
        ids = torch.cat([e.teacher.ids for e in t.examples]).to(device=device, dtype=torch.long)
        logp = torch.cat([e.teacher.logp for e in t.examples]).to(device)
        tail = torch.cat([e.teacher.tail for e in t.examples]).to(device)
        return ids, logp, tail

    def token_loss(self, t: Targets) -> torch.Tensor:
        ids, logp, tail = self.teacher_tensors(t)
        temperature = self.temperature
        return chunked(lambda logits, i, p, tl: bucket_kl(logits, i, p, tl, temperature),
                       t.head, t.hidden, ids, logp, tail)

    def describe(self) -> dict:
        return dict(name=self.name, top_k=self.top_k, temperature=self.temperature, skip_tokens=self.skip_tokens,
                    **(dict(mix=self.mix) if self.name == "mix" else {}))


@register
class Mix(Distill):
    """`distill` plus `mix` times the LM loss, on the same target tokens."""

    name = "mix"

    def token_loss(self, t: Targets) -> torch.Tensor:
        ids, logp, tail = self.teacher_tensors(t)
        temperature, weight = self.temperature, self.mix

        def both(logits, tokens, i, p, tl):
            return bucket_kl(logits, i, p, tl, temperature) + weight * _nll(logits, tokens)
        return chunked(both, t.head, t.hidden, t.tokens, ids, logp, tail)


def make_objective(name: str, distill=None, clip: float | None = None) -> Objective:
    """The objective `name` with its settings: `distill` (a DistillConfig) for distill and mix, `clip`
    for clipped."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective '{name}': choose one of {', '.join(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    if issubclass(cls, Distill):
        d = distill
        return cls(top_k=d.top_k, temperature=d.temperature, mix=d.mix, skip_tokens=d.skip_tokens) if d else cls()
    if cls is Clipped:
        return cls(clip)
    return cls()


# --- the teacher's side of distillation ------------------------------------------------------------
def skip_first_targets(example: Example, n: int) -> Example:
    """The example without a loss on its first `n` target tokens (e.g. the key a line is trained after)."""
    if n <= 0:
        return example
    labels, seen = list(example.labels), 0
    for j in range(1, len(labels)):
        if labels[j] != -100 and seen < n:
            labels[j], seen = -100, seen + 1
    return Example(example.input_ids, labels, example.weight, example.reference, example.teacher)


class TeacherCache:
    """Teacher distributions on disk, one file per (teacher, context, example): computed once, read back
    on a resume and by every later evaluation with the same example (a passage's own sequence is trained
    with each of its self-edits). Written complete or not at all."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str) -> TeacherDist | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            d = torch.load(path, weights_only=True)
            return TeacherDist(d["ids"], d["logp"], d["tail"])
        except Exception:  # a torn file from an older crash: computed again
            return None

    def put(self, key: str, dist: TeacherDist) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(dict(ids=dist.ids, logp=dist.logp, tail=dist.tail), tmp)
        crash_point("teacher-save")  # tests: killed with the file half in place
        os.replace(tmp, path)


def teacher_key(identity: list, prefix: list[int], example: Example, top_k: int, temperature: float) -> str:
    blob = json.dumps([identity, prefix, example.input_ids, example.labels, top_k, temperature])
    return hashlib.sha1(blob.encode()).hexdigest()


@torch.no_grad()
def teacher_targets(lm, examples: list[Example], prefixes: list[list[int]], objective: Distill, *,
                    precision: str = "fp32", batch_size: int = 8, cache: TeacherCache | None = None) -> None:
    """Set each example's `teacher`: the model as it is now (no adapter routed), reading prefixes[i] (the
    context, as token ids) and then example i's own tokens, gives at each of the example's target
    positions its top-k log-probabilities at the objective's temperature and the log mass of the rest.
    One forward pass without gradient per `batch_size` examples; cached when `cache` is given."""
    k, temperature = objective.top_k, objective.temperature
    identity = [lm.name, list(lm.policy or []), precision]
    todo = []
    for e, prefix in zip(examples, prefixes):
        key = teacher_key(identity, prefix, e, k, temperature)
        found = cache.get(key) if cache is not None else None
        if found is not None and len(found.ids) == target_count(e):
            e.teacher = found
        else:
            todo.append((e, prefix, key))
    if not todo:
        return
    bank = getattr(lm, "bank", None)
    if bank is not None:
        bank.route(None)  # the frozen model: no adapter
    model, pad = lm.model, lm.tokenizer.pad_token_id
    head = model.get_output_embeddings()
    with half_weights(model, precision):
        for start in range(0, len(todo), batch_size):
            part = todo[start:start + batch_size]
            rows = [prefix + e.input_ids for e, prefix, _ in part]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            with autocast(precision, lm.device):
                hidden = model.get_decoder()(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                                             use_cache=False).last_hidden_state
            for i, (e, prefix, key) in enumerate(part):
                # label j is predicted at position j - 1 of the example, len(prefix) + j - 1 of the row
                at = [len(prefix) + j - 1 for j in range(1, len(e.labels)) if e.labels[j] != -100]
                with autocast(precision, lm.device):
                    logits = head(hidden[i, at]).float() / temperature
                logp = torch.log_softmax(logits, dim=-1)
                top = logp.topk(min(k, logp.shape[-1]), dim=-1)
                # a top-k of the whole vocabulary leaves nothing out: an empty tail, whatever the rounding
                # of ~50k fp32 probabilities (their sum can miss 1 by more than TAIL_EPS)
                tail = (torch.full_like(top.values[:, 0], TAIL_FLOOR) if k >= logp.shape[-1]
                        else tail_log_mass(top.values))
                dist = TeacherDist(top.indices.to(torch.int32).cpu(), top.values.cpu(), tail.cpu())
                e.teacher = dist
                if cache is not None:
                    cache.put(key, dist)
