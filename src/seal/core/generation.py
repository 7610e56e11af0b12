"""Batched generation (greedy or sampled) and teacher-forced log-likelihood.

Prompts are left-padded so that every row of a batch continues from its last real token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from seal.core.decoding import Nucleus, decode
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


@torch.no_grad()
def completion_logprobs(lm: LoadedModel, prompts: list[str], completions: list[str], *,
                        batch_size: int = 16, precision: str = "fp32",
                        adapter_rows: list[int] | None = None, as_is: bool = False) -> list[float]:
    """Mean per-token log-probability of each completion after its prompt (teacher-forced); with
    `adapter_rows`, row i through adapter adapter_rows[i] of the installed bank. The completion is
    stripped and follows a space (an answer after "Answer:"), or with `as_is` follows the prompt
    exactly as given (a grid after "output:\n")."""
    tok = lm.tokenizer
    scores: list[float] = []
    with half_weights(lm.model, precision):
        for start in range(0, len(prompts), batch_size):
            rows = []
            for prompt, completion in zip(prompts[start:start + batch_size], completions[start:start + batch_size]):
                p = tok(prompt, add_special_tokens=False)["input_ids"]
                c = tok(completion if as_is else " " + completion.strip(), add_special_tokens=False)["input_ids"]
                rows.append((p + c, len(p)))
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, (ids, _) in enumerate(rows):  # right padding: positions stay aligned with the prompt
                input_ids[i, :len(ids)] = torch.tensor(ids)
                mask[i, :len(ids)] = 1
            _route(lm, adapter_rows, start, len(rows))
            # Vocabulary logits only where a completion token is predicted, not for every prompt token.
            wanted = torch.zeros_like(input_ids, dtype=torch.bool)
            for i, (ids, n_prompt) in enumerate(rows):
                wanted[i, n_prompt - 1:len(ids) - 1] = True  # position t predicts token t + 1
            with autocast(precision, lm.device):
                hidden = lm.model.get_decoder()(input_ids=input_ids.to(lm.device),
                                                attention_mask=mask.to(lm.device)).last_hidden_state
                logits = lm.model.get_output_embeddings()(hidden[wanted.to(lm.device)]).float()
            targets = input_ids[:, 1:][wanted[:, :-1]].to(lm.device)
            token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            at = 0
            for ids, n_prompt in rows:
                n = len(ids) - n_prompt
                scores.append(float(token_logp[at:at + n].mean()))
                at += n
        _route(lm, None, 0, 0)
    return scores
