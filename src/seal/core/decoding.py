"""Decoding with a KV cache whose rows come and go (the loop behind `generation.generate`).

Up to `slots` rows decode together. A row leaves the batch once it ends (an end token, the length
limit, or a condition of the caller's such as "wrote its first line") and waiting prompts take the
free places, so decode steps are not spent on rows that have ended and the batch stays full until the
prompts run out. Written by hand because Hugging Face's `generate` decodes every row of a batch until
its longest row ends (at batch 16, more than half of the positions it decoded belonged to rows that had
already ended: docs/performance.md#generation), and its continuous-batching engine packs all rows into
one sequence, which the adapter bank's per-row routing cannot follow.

The loop drives a `DynamicCache` whose layers write new tokens into room kept for them (`_Room`): rows
join by a prefill of their own, whose cache is padded on the left to the batch's width and concatenated;
rows leave by indexing, which also drops the columns no remaining row uses. Position ids count each
row's own tokens, as `generate` counts them under left padding, so a row computes what it would
compute alone.

Sampling (`Nucleus`) draws each row from its own random generator, seeded by the caller's seed and the
row's index: a row's text depends on its prompt and seed, not on the batch size or on the rows beside
it (up to the float rounding of batched matmuls).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from transformers.cache_utils import DynamicLayer


class Nucleus:
    """Next tokens: greedy (temperature 0), or sampled at `temperature` from the smallest set of most
    likely tokens whose probability reaches `top_p` (the tokens Hugging Face's top-p warper keeps: a
    token stays if the tokens more likely than it hold less than `top_p`). Each row draws one uniform
    number a token from its own generator and takes the token where it falls in the kept tokens'
    cumulative distribution (inverse-CDF sampling: the same distribution as `torch.multinomial`, in one
    batched search instead of a call per row over the whole vocabulary)."""

    CANDIDATES = 1024  # tokens sorted per row; the whole vocabulary only where these hold less than top_p

    def __init__(self, temperature: float, top_p: float, seeds: list[int], device: torch.device):
        self.temperature, self.top_p = temperature, top_p
        self.generators = None
        if temperature > 0:
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        if self.generators is None:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        u = torch.cat([torch.rand(1, generator=self.generators[r], device=probs.device) for r in rows])
        if self.top_p >= 1.0:
            return _inverse_cdf(probs, u)
        top, order = probs.topk(min(self.CANDIDATES, probs.shape[-1]), dim=-1)
        picked = order.gather(1, _inverse_cdf(self._nucleus(top), u)[:, None])[:, 0]
        wide = (top.sum(-1) < self.top_p).nonzero()[:, 0]  # flat rows: the nucleus reaches past the candidates
        if len(wide):
            p, o = probs[wide].sort(dim=-1, descending=True)
            picked[wide] = o.gather(1, _inverse_cdf(self._nucleus(p), u[wide])[:, None])[:, 0]
        return picked

    def _nucleus(self, p: torch.Tensor) -> torch.Tensor:
        """`p` (sorted, most likely first) with the tokens outside the nucleus set to zero."""
        above = p.cumsum(-1) - p  # probability of the tokens more likely than each one
        return torch.where(above < self.top_p, p, torch.zeros_like(p))


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For each row, the first index whose cumulative weight exceeds u times the row's total."""
    cdf = weights.cumsum(-1)
    index = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return index.clamp(max=weights.shape[-1] - 1)


class _Room(DynamicLayer):
    """One layer's cache in buffers with room to grow: a new token's keys and values are written in place
    (Hugging Face's growing layer concatenates, copying the layer's whole cache at every token: a quarter
    of a decode step at batch 32), stored in `dtype`. Under bf16 autocast that is bf16 for keys too, which
    the rotary embedding otherwise leaves in float32, so that attention does not cast the whole key cache
    at every step; autocast would round them to bf16 for attention anyway, so the numbers are the same."""

    ROOM = 64  # positions added whenever the buffers fill up

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, dtype: torch.dtype | None):
        super().__init__()
        self.dtype = dtype
        self.device, self.is_initialized = keys.device, True
        self.set(keys, values)

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the cache by `keys` and `values` (batch, heads, positions, dim), with fresh room."""
        self.n = keys.shape[2]
        self._keys, self._values = (self._room(t, self.n + self.ROOM) for t in (keys, values))
        self._view()

    def _room(self, t: torch.Tensor, size: int) -> torch.Tensor:
        buffer = t.new_empty((*t.shape[:2], size, t.shape[3]), dtype=self.dtype or t.dtype)
        buffer[:, :, :t.shape[2]] = t
        return buffer

    def _view(self) -> None:
        self.keys, self.values = self._keys[:, :, :self.n], self._values[:, :, :self.n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[2]
        if self.n + new > self._keys.shape[2]:
            size = self.n + new + max(self.ROOM, self.n // 2)
            self._keys, self._values = self._room(self.keys, size), self._room(self.values, size)
        self._keys[:, :, self.n:self.n + new] = key_states
        self._values[:, :, self.n:self.n + new] = value_states
        self.n += new
        self._view()
        return self.keys, self.values


class _Batch:
    """The rows decoding together: which prompts they are, their cache, attention mask (one column per
    cached position), the token each feeds next, its position id, and whether the row has ended."""

    def __init__(self, rows: list[int], cache, mask: torch.Tensor, last: torch.Tensor, positions: torch.Tensor):
        self.rows, self.cache, self.mask, self.last, self.positions = rows, cache, mask, last, positions
        self.ended = [False] * len(rows)

    @property
    def live(self) -> int:
        return self.ended.count(False)

    def keep(self, keep: list[int]) -> None:
        """Only rows `keep` stay; cache columns that none of them uses are dropped."""
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        first = int(mask.any(0).nonzero()[0]) if len(keep) else 0
        for layer in self.cache.layers:
            layer.set(layer.keys[index, :, first:], layer.values[index, :, first:])
        self.mask, self.last, self.positions = mask[:, first:], self.last[index], self.positions[index]
        self.rows = [self.rows[i] for i in keep]
        self.ended = [self.ended[i] for i in keep]

    def join(self, other: _Batch) -> None:
        """Rows of `other` (a fresh prefill) decode beside these from now on."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.set(torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)]),
                     torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)]))
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        self.last = torch.cat([self.last, other.last])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows
        self.ended += other.ended


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` with zero columns before its own up to `width` (a mask's last dimension, a cache's third)."""
    dim = 1 if t.dim() == 2 else 2
    extra = width - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def reads_ready_mask(model) -> bool:
    """Whether the model's attention takes a boolean (batch, 1, queries, keys) mask as given (True:
    attend): Hugging Face's SDPA path does; eager adds a mask to its scores, flash attention reads none."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"


def plain_cache(cache) -> bool:
    """Whether every layer of `cache` is a growing full-attention layer, the only kind `decode` rearranges
    (a sliding-window or static layer keeps positions it would misplace)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def decode(model, prompts: list[list[int]], *, max_new_tokens: int, slots: int, pick: Callable,
           pad_id: int, end_ids: set[int], done: Callable[[int, list[int]], bool] | None = None,
           route: Callable[[list[int]], None] | None = None,
           cache_dtype: torch.dtype | None = None) -> list[tuple[list[int], bool]]:
    """For each prompt (token ids), the token ids generated after it (without the end token) and whether
    an end token stopped it.

    `pick(logits, rows)` chooses the next token of each row from its float32 logits; `done(row, tokens)`,
    if given, says whether a row ends after its newest token; `route(rows)` is called before every
    forward pass with the prompt index of each row of the batch (to send rows through their adapters).
    Up to `slots` rows decode at once; freed places are refilled once a quarter of them is free (or the
    prompts left fit), since each join and each compaction copies the batch's cache. The cache is kept in
    `cache_dtype` (None: as the model writes it)."""
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    pending = deque(range(len(prompts)))
    batch: _Batch | None = None
    quarter = max(1, slots // 4)
    # Decode steps pass SDPA its mask ready-made, (batch, 1, 1, positions), which Hugging Face uses as is,
    # also where no row has padding (from a 2D mask of ones it would make none). With a mask, its SDPA path
    # folds the query heads that share a key head into one query of several rows; without, it asks torch
    # for grouped-query attention, whose CPU kernel for a single query is slow in bf16 (a layer at batch
    # 32 of the embedded model: 3.5 ms against 0.7 ms). The same attention either way.
    ready_mask = reads_ready_mask(model)

    def forward(rows: list[int], **inputs):
        if route:
            route(rows)
        return model(**inputs, use_cache=True, logits_to_keep=1)

    def prefill(rows: list[int]) -> _Batch:
        # Rows with the same prompt (the k self-edits of one context) share its forward pass: computed once,
        # its cache and logits copied to each, so that each still samples from its own generator. Not
        # when rows are routed, since the same prompt through two adapters is two computations.
        unique, which = rows, list(range(len(rows)))
        if route is None:
            keys = [tuple(prompts[r]) for r in rows]
            slot: dict[tuple[int, ...], int] = {}
            which = [slot.setdefault(key, len(slot)) for key in keys]  # each row's place among the distinct prompts
            unique = [rows[keys.index(key)] for key in slot]
        width = max(len(prompts[r]) for r in unique)
        ids = torch.full((len(unique), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(unique), width), dtype=torch.long)
        for i, r in enumerate(unique):  # left padding: every row continues from its last column
            ids[i, width - len(prompts[r]):] = torch.tensor(prompts[r])
            mask[i, width - len(prompts[r]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        result = forward(unique, input_ids=ids, attention_mask=mask, position_ids=positions)
        if not plain_cache(result.cache):
            raise NotImplementedError("decode rearranges full-attention caches only")
        cache, logits = result.cache, result.logits[:, -1].float()
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        if len(unique) < len(rows):  # each row gets its prompt's cache, mask and logits
            index = torch.tensor(which, dtype=torch.long, device=device)
            layers = [(keys[index], values[index]) for keys, values in layers]
            mask, logits = mask[index], logits[index]
        cache.layers = [_Room(keys, values, cache_dtype) for keys, values in layers]
        return _Batch(rows, cache, mask, pick(logits, rows), mask.sum(-1))

    def take(b: _Batch) -> None:
        """Append each live row's newest token (b.last) to its output, or end the row."""
        for j, (r, token) in enumerate(zip(b.rows, b.last.tolist())):
            if b.ended[j]:
                continue
            if token in end_ids:
                b.ended[j] = stopped[r] = True
                continue
            out[r].append(token)
            b.ended[j] = len(out[r]) >= max_new_tokens or bool(done and done(r, out[r]))

    while pending or (batch is not None and batch.live):
        live = batch.live if batch is not None else 0
        joining = min(slots - live, len(pending))
        if joining and (joining >= quarter or joining == len(pending) or live == 0):
            if batch is not None:
                batch.keep([j for j, e in enumerate(batch.ended) if not e])
            fresh = prefill([pending.popleft() for _ in range(joining)])
            take(fresh)
            if batch is None or not batch.rows:
                batch = fresh
            else:
                batch.join(fresh)
            continue
        dead = len(batch.rows) - live
        if dead and (dead >= quarter or dead >= live):
            batch.keep([j for j, e in enumerate(batch.ended) if not e])
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        mask = batch.mask[:, None, None, :].bool() if ready_mask else batch.mask
        result = forward(batch.rows, input_ids=batch.last[:, None], attention_mask=mask,
                         position_ids=batch.positions[:, None], cache=batch.cache)
        batch.cache, batch.positions = result.cache, batch.positions + 1
        batch.last = pick(result.logits[:, -1].float(), batch.rows)
        take(batch)
    return list(zip(out, stopped))
