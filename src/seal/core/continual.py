"""One model updated again and again, and the remedies against forgetting that act on each update.

`SequentialLora` gives a model one LoRA update after another: each merged into the weights
(`merge`), or kept as a stack of adapters that are all active (`stack`, where every step can still be
told apart). Between `begin` and `commit` the caller trains the new adapter with `training.train`,
adding any remedy's loss:

- replay: `replay_sample` draws training sequences of earlier steps to mix into the new data;
- KL: `kl_to_reference` keeps the updated model's next-token distributions close to those of the
  model before this step (`SequentialLora.reference`) on earlier material;
- orthogonal subspaces: `orthogonal_penalty` penalises overlap between the new adapter's A matrices
  and those of every earlier step, so that each update reads a different input subspace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model

from seal.core.config import LoraTrainConfig
from seal.core.models import LoadedModel
from seal.core.training import Example, check_targets, collate, init_like_bank, peft_config, save_adapter, stashed, target_linears

PREFIX = "base_model.model."


class SequentialLora:
    """Used as a context manager: on exit the model has its starting weights again."""

    def __init__(self, lm: LoadedModel, cfg: LoraTrainConfig, mode: str = "merge"):
        if mode not in ("merge", "stack"):
            raise ValueError(f"mode '{mode}': choose merge or stack")
        check_targets(lm.model, cfg)
        self.lm, self.cfg, self.mode = lm, cfg, mode
        self.names: list[str] = []  # committed steps
        self.history: list[dict[str, torch.Tensor]] = []  # each committed step's A matrices, by layer
        self.peft: PeftModel | None = None  # merge: the wrapper of the step in progress; stack: of all steps
        self.current: str | None = None

    def __enter__(self) -> SequentialLora:
        # Merging changes the targeted layers' weights, which are kept on disk until the exit; a stack
        # only adds adapters, which unloading removes.
        self._restore = ExitStack()
        if self.mode == "merge":
            self._restore.enter_context(
                stashed(self.lm.model, [f"{n}.weight" for n, _ in target_linears(self.lm.model, self.cfg)]))
        return self

    def __exit__(self, *exc) -> None:
        if self.peft is not None:
            self.lm.model = self.peft.unload()  # the base modules back, without any adapter
            self.peft = None
        self._restore.close()
        for p in self.lm.model.parameters():
            p.requires_grad_(False)
        self.lm.model.eval()

    # --- one step --------------------------------------------------------------------------------
    def begin(self, seed: int) -> PeftModel:
        """A new trainable adapter on top of every committed step; returns the model to train."""
        name = f"step{len(self.names) + 1}"
        torch.manual_seed(seed)
        if self.peft is None:
            self.peft = get_peft_model(self.lm.model, peft_config(self.cfg), adapter_name=name)
        else:
            self.peft.add_adapter(name, peft_config(self.cfg))
        init_like_bank(self.peft, seed, name)
        self.current = name
        self._activate(self._live() + [name], trainable=name)
        return self.peft

    def commit(self, save_dir: str | Path | None = None) -> None:
        """Fold the step in progress into the model (merge) or freeze it on the stack; save it first."""
        name, self.current = self.current, None
        if save_dir is not None:
            save_adapter(self.peft, Path(save_dir), name)
        self.history.append(a_matrices(self.peft, name))
        self.names.append(name)
        self._settle()

    def load(self, adapter_dir: str | Path) -> None:
        """Re-apply a step saved by `commit` (resuming a sequence)."""
        name = f"step{len(self.names) + 1}"
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.lm.model, str(adapter_dir), adapter_name=name)
        else:
            self.peft.load_adapter(str(adapter_dir), adapter_name=name)
        self.history.append(a_matrices(self.peft, name))
        self.names.append(name)
        self._settle()

    @contextmanager
    def reference(self):
        """The model as it was before the step in progress (for a KL term)."""
        previous = self._live()
        if not previous:
            with self.peft.disable_adapter():
                yield
            return
        self._activate(previous, trainable=None)
        try:
            yield
        finally:
            self._activate(previous + [self.current], trainable=self.current)

    # --- internals -------------------------------------------------------------------------------
    def _live(self) -> list[str]:
        """Committed adapters still present as adapters (none once merged)."""
        return list(self.names) if self.mode == "stack" else []

    def _settle(self) -> None:
        if self.mode == "merge":
            self.lm.model = self.peft.merge_and_unload()
            self.peft = None
        else:
            self._activate(self.names, trainable=None)
            self.lm.model = self.peft.base_model.model  # what generation and scoring call; adapters inside
        for p in self.lm.model.parameters():
            p.requires_grad_(False)
        self.lm.model.eval()

    def _activate(self, names: list[str], trainable: str | None) -> None:
        self.peft.base_model.set_adapter(names)  # several active adapters add up
        for n, p in self.peft.named_parameters():
            p.requires_grad_(trainable is not None and f".{trainable}." in n)


def a_matrices(peft: PeftModel, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s A matrix (rank x in) of every adapted layer, detached, keyed by layer name."""
    return {n.removeprefix(PREFIX): m.lora_A[name].weight.detach().clone()
            for n, m in peft.named_modules() if name in getattr(m, "lora_A", {})}


# --- remedies -------------------------------------------------------------------------------------
def replay_sample(earlier: Sequence[Sequence[Example]], n: int, seed: int) -> list[tuple[int, int]]:
    """n (step, index) picks, uniform over every training sequence of the earlier steps (without
    replacement while they last). Nothing from the step in progress: it is not in `earlier`."""
    pool = [(s, i) for s, examples in enumerate(earlier) for i in range(len(examples))]
    if not pool or n <= 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    picks = []
    while len(picks) < n:
        order = torch.randperm(len(pool), generator=gen).tolist()
        picks += [pool[j] for j in order[:n - len(picks)]]
    return picks


def kl_to_reference(model: torch.nn.Module, batch: dict[str, torch.Tensor], reference) -> torch.Tensor:
    """Mean over real tokens of KL(p_reference || p_model) between next-token distributions; gradient
    flows through the model's side only. `reference()` is a context in which `model` is the old model."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad(), reference():
        old = F.log_softmax(model(**inputs).logits.float(), dim=-1)
    new = F.log_softmax(model(**inputs).logits.float(), dim=-1)
    kl = (old.exp() * (old - new)).sum(-1)
    return kl[batch["attention_mask"].bool()].mean()


def kl_loss(model: torch.nn.Module, earlier: Sequence[Sequence[Example]], batch_size: int, weight: float,
            reference, seed: int, pad_id: int, device) -> Callable[[int], torch.Tensor] | None:
    """`extra_loss(step)` for training.train: weight x KL to the old model on `batch_size` sequences
    drawn from the earlier steps (a fresh seeded draw each step). None when there is nothing earlier."""
    if not any(len(e) for e in earlier):
        return None

    def term(step: int) -> torch.Tensor:
        picks = replay_sample(earlier, batch_size, seed + step)
        batch = collate([earlier[s][i] for s, i in picks], pad_id)
        return weight * kl_to_reference(model, {k: v.to(device) for k, v in batch.items()}, reference)
    return term


@torch.no_grad()
def project_out(peft: PeftModel, name: str, history: list[dict[str, torch.Tensor]]) -> None:
    """Remove from adapter `name`'s A matrices their components in the row space of every earlier A, so
    that the new adapter starts out reading an input subspace orthogonal to the earlier ones."""
    for n, m in peft.named_modules():
        if name in getattr(m, "lora_A", {}) and history:
            a = m.lora_A[name].weight
            old = torch.cat([h[n.removeprefix(PREFIX)].to(a.device, torch.float32) for h in history])  # (r*t, in)
            q, _ = torch.linalg.qr(old.T)  # (in, r*t): an orthonormal basis of the earlier rows
            a.copy_((a.float() - (a.float() @ q) @ q.T).to(a.dtype))


def orthogonal_penalty(peft: PeftModel, name: str, history: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Sum over layers and earlier steps of ||A_new A_old^T||_F^2: zero when the new adapter reads an input
    subspace orthogonal to every earlier one."""
    total = None
    for n, m in peft.named_modules():
        if name in getattr(m, "lora_A", {}):
            a = m.lora_A[name].weight
            key = n.removeprefix(PREFIX)
            for old in history:
                term = (a @ old[key].to(a.device, a.dtype).T).pow(2).sum()
                total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
