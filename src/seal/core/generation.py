"""Batched generation (greedy or sampled) and teacher-forced log-likelihood.

Prompts are left-padded so that every row of a batch continues from its last real token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from seal.core.decoding import Nucleus, decode, reads_ready_mask
from seal.core.models import LoadedModel, native_bf16_cpu
from seal.core.progress import count


@dataclass
class Generation:
    text: str
    n_tokens: int
    hit_limit: bool  # stopped by max_new_tokens rather than by an end token or stop string


def autocast(precision: str, device: torch.device):
    """bf16 autocast where asked for; a no-op context for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def half_weights(model: torch.nn.Module, precision: str):
    """Under bf16, every frozen fp32 linear weight (and bias) of `model` replaced by a bf16 copy while
    the context lasts, cast once. Autocast casts a weight that needs no gradient again at every matmul
    (it caches only the casts of weights that do), so every generated token and every training pass
    paid for casting all of the model's linear weights: for the embedded model, 135M numbers, about
    0.5 s a 512-token pass on this project's CPU. Autocast rounds to bf16 as `.to` does, so the
    numbers are the same. The copies cost half the linear weights' fp32 memory while they exist; a
    full fine-tuning's weights (which need gradients) are not copied."""
    if precision != "bf16":
        yield
        return
    swapped = []
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for name in ("weight", "bias"):
            p = getattr(module, name)
            if p is not None and p.dtype == torch.float32 and not p.requires_grad:
                swapped.append((module, name, p))
                # a new Parameter for this module alone: a tied input embedding keeps its fp32 weight
                setattr(module, name, torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
    try:
        yield
    finally:
        for module, name, p in reversed(swapped):
            setattr(module, name, p)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # On CPU, bf16 autocast pays off only with native bf16 instructions (AVX512-BF16 or AMX).
    return "bf16" if native_bf16_cpu() else "fp32"


def format_prompt(lm: LoadedModel, prompt: str, chat: bool) -> str:
    if chat and lm.tokenizer.chat_template:
        return lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return prompt


def use_chat(lm: LoadedModel, setting: str) -> bool:
    return setting == "always" or (setting == "auto" and bool(lm.tokenizer.chat_template))


def first_line_written(text: str) -> bool:
    """Whether an answer has written a non-empty line and a newline after it. (A plain stop string would
    end answers that start with a newline, as the embedded model's often do, empty.)"""
    return "\n" in text.lstrip()


class FirstLineDone(StoppingCriteria):
    """`first_line_written` for each row, as a stopping criterion of Hugging Face's `generate`."""

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([first_line_written(t) for t in texts], device=input_ids.device)


def row_seed(seed: int, row: int) -> int:
    """The seed of row `row`'s generator in a sampled call with `seed` (distinct for rows below a million)."""
    return (seed * 1_000_003 + row) % 2**63


@torch.no_grad()
def generate(lm: LoadedModel, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 8, seed: int = 0, stop_at_newline: bool = False,
             precision: str = "fp32", adapter_rows: list[int] | None = None) -> list[Generation]:
    """Continue each (already formatted) prompt; greedy when temperature is 0, else sampled at
    `temperature` with top-p. Up to `batch_size` rows decode together (core/decoding.py: a row that ends
    makes room for the next prompt). Row i samples from its own generator, seeded by `seed` and i, so its
    text does not depend on `batch_size`. With `adapter_rows`, prompt i goes through adapter
    adapter_rows[i] of the model's installed adapter bank. With `stop_at_newline`, an answer ends once
    it has written its first line, and that line is its text."""
    if adapter_rows is not None and lm.bank is None:
        raise ValueError("adapter_rows given but no adapter bank is installed in the model")
    tok = lm.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if empty := [i for i, row in enumerate(ids) if not row]:
        raise ValueError(f"generate: prompt {empty[0]} has no tokens")
    end_ids = {tok.eos_token_id, *_as_list(lm.model.generation_config.eos_token_id)} - {None}

    def done(row: int, tokens: list[int]) -> bool:  # decodes a row only when its newest token holds a newline
        return "\n" in tok.decode(tokens[-1:]) and first_line_written(tok.decode(tokens, skip_special_tokens=True))

    def route(rows: list[int]) -> None:
        lm.bank.route([adapter_rows[r] for r in rows])

    if lm.bank is not None and adapter_rows is None:
        lm.bank.route(None)
    with half_weights(lm.model, precision), autocast(precision, lm.device):  # weights cast once, not at every token
        try:
            results = decode(lm.model, ids, max_new_tokens=max_new_tokens, slots=batch_size, pad_id=tok.pad_token_id,
                             pick=Nucleus(temperature, top_p, [row_seed(seed, i) for i in range(len(ids))], lm.device),
                             end_ids=end_ids, done=done if stop_at_newline else None,
                             route=route if adapter_rows is not None else None,
                             cache_dtype=torch.bfloat16 if precision == "bf16" else None)
        except NotImplementedError:  # a sliding-window or static cache: Hugging Face's generate, batch by batch
            _route(lm, None, 0, 0)
            return hf_generate(lm, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               batch_size=batch_size, seed=seed, stop_at_newline=stop_at_newline,
                               precision=precision, adapter_rows=adapter_rows)
    _route(lm, None, 0, 0)
    out = []
    for tokens, stopped in results:
        text = tok.decode(tokens, skip_special_tokens=True)
        hit_limit = not stopped and len(tokens) >= max_new_tokens
        if stop_at_newline and first_line_written(text):
            text, hit_limit = text.lstrip().split("\n", 1)[0], False
        out.append(Generation(text=text.strip(), n_tokens=len(tokens), hit_limit=hit_limit))
    count("generated tokens", sum(g.n_tokens for g in out))
    return out


def _as_list(ids) -> list:
    return [] if ids is None else list(ids) if isinstance(ids, (list, tuple)) else [ids]


@torch.no_grad()
def hf_generate(lm: LoadedModel, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
                top_p: float = 1.0, batch_size: int = 8, seed: int = 0, stop_at_newline: bool = False,
                precision: str = "fp32", adapter_rows: list[int] | None = None) -> list[Generation]:
    """`generate` through Hugging Face's `generate`, batch after batch, every row of a batch decoded until
    its longest row ends; a batch's samples depend on the seed and the batch's position. For models whose
    cache `decode` cannot rearrange, and the reference `generate` is tested against."""
    tok = lm.tokenizer
    out: list[Generation] = []
    sampling = temperature > 0
    with half_weights(lm.model, precision):  # cast once, not at every token
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
            torch.manual_seed(seed + start)
            width = enc["input_ids"].shape[1]
            _route(lm, adapter_rows, start, len(chunk))
            extra = dict(stopping_criteria=StoppingCriteriaList([FirstLineDone(tok, width)])) if stop_at_newline else {}
            with autocast(precision, lm.device):
                ids = lm.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=sampling,
                    temperature=temperature if sampling else None, top_p=top_p if sampling else None,
                    top_k=None, pad_token_id=tok.pad_token_id, **extra)
            new = ids[:, width:]
            for row in new:
                ended = (row == tok.eos_token_id).nonzero()
                n = int(ended[0]) if len(ended) else int((row != tok.pad_token_id).sum())
                text = tok.decode(row[:n], skip_special_tokens=True)
                hit_limit = not len(ended) and n >= max_new_tokens
                if stop_at_newline and first_line_written(text):
                    text, hit_limit = text.lstrip().split("\n", 1)[0], False
                out.append(Generation(text=text.strip(), n_tokens=n, hit_limit=hit_limit))
    _route(lm, None, 0, 0)
    count("generated tokens", sum(g.n_tokens for g in out))
    return out


def _route(lm: LoadedModel, adapter_rows: list[int] | None, start: int, n: int) -> None:
    if adapter_rows is not None and lm.bank is None:
        raise ValueError("adapter_rows given but no adapter bank is installed in the model")
    if lm.bank is not None:
        lm.bank.route(None if adapter_rows is None else adapter_rows[start:start + n])


PACKED_ROW_TOKENS = 1024  # a row of completions sharing a prompt holds at most this many tokens (or one completion)


@torch.no_grad()
def completion_logprobs(lm: LoadedModel, prompts: list[str], completions: list[str], *,
                        batch_size: int = 16, precision: str = "fp32",
                        adapter_rows: list[int] | None = None, as_is: bool = False,
                        share_prompts: bool = True) -> list[float]:
    """Mean per-token log-probability of each completion after its prompt (teacher-forced); with
    `adapter_rows`, row i through adapter adapter_rows[i] of the installed bank. The completion is
    stripped and follows a space (an answer after "Answer:"), or with `as_is` follows the prompt
    exactly as given (a grid after "output:\n").

    Completions of one prompt through one adapter share a row: the prompt once, then each completion
    at the positions it would have after the prompt, seeing the prompt and itself only (a question with
    its gold answer and 8 distractors is one row of the prompt and 9 short answers, not 9 rows that
    each repeat the prompt). The same numbers as a row per completion; `batch_size` rows a pass. With
    `share_prompts` false, or under an attention that reads no ready-made mask (flash attention), a
    row per completion."""
    tok = lm.tokenizer
    if adapter_rows is not None and lm.bank is None:
        raise ValueError("adapter_rows given but no adapter bank is installed in the model")
    shared = share_prompts and reads_ready_mask(lm.model)
    prompt_ids: dict[str, list[int]] = {}
    groups: dict[tuple, list[tuple[int, list[int]]]] = {}  # (prompt, adapter) -> [(completion index, its ids)]
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        if prompt not in prompt_ids:
            prompt_ids[prompt] = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(completion if as_is else " " + completion.strip(), add_special_tokens=False)["input_ids"]
        groups.setdefault((prompt, None if adapter_rows is None else adapter_rows[i]), []).append((i, ids))
    rows: list[_Packed] = []
    for (prompt, adapter), members in groups.items():
        row = None
        for i, ids in members:
            if row is None or not shared or row.width + len(ids) > PACKED_ROW_TOKENS:
                row = _Packed(prompt_ids[prompt], adapter)
                rows.append(row)
            row.add(i, ids)
    scores = [float("nan")] * len(prompts)
    with half_weights(lm.model, precision):
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            if lm.bank is not None:
                lm.bank.route(None if adapter_rows is None else [r.adapter for r in part])
            width = max(r.width for r in part)
            input_ids = torch.full((len(part), width), tok.pad_token_id, dtype=torch.long)
            positions = torch.arange(width).repeat(len(part), 1)
            segments = torch.full((len(part), width), -1, dtype=torch.long)  # -1: padding
            for j, r in enumerate(part):
                input_ids[j, :r.width] = torch.tensor(r.ids)
                positions[j, :r.width] = torch.tensor(r.positions)
                segments[j, :r.width] = torch.tensor(r.segments)
            if shared:  # a token sees the tokens before it in the prompt and in its own completion
                before = torch.ones(width, width, dtype=torch.bool).tril()
                seen = (segments[:, :, None] == segments[:, None, :]) | (segments[:, None, :] == 0)
                inputs = dict(attention_mask=(seen & before)[:, None], position_ids=positions)
            else:
                inputs = dict(attention_mask=(segments >= 0).long())
            rows_at = torch.tensor([j for j, r in enumerate(part) for _ in r.targets])
            columns = torch.tensor([c for r in part for c, _ in r.targets])
            targets = torch.tensor([t for r in part for _, t in r.targets], device=lm.device)
            with autocast(precision, lm.device):
                hidden = lm.model.get_decoder()(input_ids=input_ids.to(lm.device),
                                                **{k: v.to(lm.device) for k, v in inputs.items()}).last_hidden_state
                # vocabulary logits only where a completion token is predicted
                logits = lm.model.get_output_embeddings()(hidden[rows_at.to(lm.device), columns.to(lm.device)]).float()
            token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()
            at = 0
            for r in part:
                for i, n in r.members:
                    scores[i] = sum(token_logp[at:at + n]) / n if n else float("nan")
                    at += n
        _route(lm, None, 0, 0)
    return scores


class _Packed:
    """One row of `completion_logprobs`: a prompt and completions after it, each at the positions it has
    right after the prompt (segment 0 is the prompt, segment k the k-th completion); `targets` lists,
    per completion token, the column whose output predicts it and the token."""

    def __init__(self, prompt: list[int], adapter: int | None):
        self.adapter, self.n_prompt = adapter, len(prompt)
        self.ids, self.positions, self.segments = list(prompt), list(range(len(prompt))), [0] * len(prompt)
        self.members: list[tuple[int, int]] = []  # (completion index, its number of tokens)
        self.targets: list[tuple[int, int]] = []

    @property
    def width(self) -> int:
        return len(self.ids)

    def add(self, index: int, ids: list[int]) -> None:
        first = self.width
        for t, token in enumerate(ids):  # its first token is predicted by the prompt's last position
            self.targets.append((self.n_prompt - 1 if t == 0 else first + t - 1, token))
        self.ids += ids
        self.positions += range(self.n_prompt, self.n_prompt + len(ids))
        self.segments += [len(self.members) + 1] * len(ids)
        self.members.append((index, len(ids)))
