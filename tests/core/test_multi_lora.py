"""The batched multi-adapter inner loop gives what training each adapter alone gives."""

from __future__ import annotations

import pytest
import torch

from seal.core.config import LoraTrainConfig
from seal.core.generation import completion_logprobs, generate
from seal.core.multi_lora import BatchedAdamW, adapter_bank, micro_batches, pack, train_bank
from seal.core.training import fresh_adapter, lm_examples, train

TEXTS = [
    ["The lighthouse of Varn was lit in 1821.", "Its keeper was Ida Morrow.", "It stands on basalt."],
    ["Quill moss grows only on north-facing slate.", "It turns red in frost."],
    ["The Hollis canal links two lakes.", "Barges pay a toll of three coins.", "It freezes in winter.",
     "Locks raise boats twelve metres.", "It opened in 1903."],
]


def _cfg(**kw) -> LoraTrainConfig:
    base = dict(rank=4, alpha=8, lr=5e-3, epochs=3, batch_size=2, target_modules=["q_proj", "v_proj", "down_proj"])
    return LoraTrainConfig(**{**base, **kw})


def _alone(lm, cfg, examples, seed):
    """One adapter trained by the one-at-a-time path; returns its lora weights by bank layer name."""
    with fresh_adapter(lm, cfg, seed) as wrapped:
        stats = train(wrapped, examples, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id, device=lm.device)
        state = {n.removeprefix("base_model.model.").replace(".default", ""): p.detach().clone()
                 for n, p in wrapped.named_parameters() if "lora_" in n}
    return state, stats


@pytest.mark.parametrize("batch_size", [1, 2])
def test_batched_training_equals_training_each_adapter_alone(tiny, batch_size):
    cfg = _cfg(batch_size=batch_size)
    seeds = [11, 22, 33]
    datasets = [lm_examples(tiny.tokenizer, t, 64) for t in TEXTS]  # different sizes: 3, 2 and 5 rows
    alone = [_alone(tiny, cfg, d, s) for d, s in zip(datasets, seeds)]
    # a small token budget forces several forward passes per step, mixing adapters within each
    with adapter_bank(tiny, cfg, seeds) as bank:
        stats = train_bank(tiny, bank, datasets, cfg, seeds=seeds, max_tokens=40)
        batched = [bank.adapter_state(k) for k in range(3)]
    for k, ((state, st), got) in enumerate(zip(alone, batched)):
        assert set(state) == set(got)
        for name, expected in state.items():
            assert torch.allclose(got[name], expected, atol=1e-5, rtol=1e-4), (k, name)
        assert stats[k].steps == st.steps
        assert stats[k].first_loss == pytest.approx(st.first_loss, rel=1e-4)
        assert stats[k].last_loss == pytest.approx(st.last_loss, rel=1e-4)
        assert any((v.abs() > 0).any() for n, v in got.items() if "lora_B" in n)  # it did train


def test_bank_restores_the_base_model_and_routes_rows_to_their_own_adapter(tiny):
    cfg = _cfg()
    before = {n: p.clone() for n, p in tiny.model.state_dict().items()}
    prompts = ["The lighthouse of Varn", "Quill moss grows"]
    plain = generate(tiny, prompts, max_new_tokens=5)
    datasets = [lm_examples(tiny.tokenizer, t, 64) for t in TEXTS]
    solo = []
    for k, seed in enumerate([1, 2, 3]):  # each adapter alone, through the bank with one adapter
        with adapter_bank(tiny, cfg, [seed]) as bank:
            train_bank(tiny, bank, [datasets[k]], cfg, seeds=[seed])
            solo.append(completion_logprobs(tiny, prompts, ["was lit", "on slate"], adapter_rows=[0, 0]))
    with adapter_bank(tiny, cfg, [1, 2, 3]) as bank:
        train_bank(tiny, bank, datasets, cfg, seeds=[1, 2, 3])
        rows = [2, 0, 1, 0, 2, 1]  # mixed order: each row must see its own adapter only
        mixed = completion_logprobs(tiny, prompts * 3, ["was lit", "on slate"] * 3, adapter_rows=rows)
        unrouted = completion_logprobs(tiny, prompts, ["was lit", "on slate"])
    for i, k in enumerate(rows):
        assert mixed[i] == pytest.approx(solo[k][i % 2], abs=1e-4)
    assert unrouted == pytest.approx(completion_logprobs(tiny, prompts, ["was lit", "on slate"]), abs=1e-6)
    after = tiny.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    assert [g.text for g in generate(tiny, prompts, max_new_tokens=5)] == [g.text for g in plain]
    assert tiny.bank is None


def test_batched_adamw_matches_torch_and_leaves_inactive_adapters_alone():
    torch.manual_seed(0)
    start = torch.randn(3, 5)
    mine, grad = start.clone(), torch.zeros(3, 5)
    refs = [torch.nn.Parameter(start[k].clone()) for k in range(3)]
    opt = BatchedAdamW(mine, grad, lr=0.1, totals=[4, 2, 4], weight_decay=0.01)
    torch_opts = [torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) for p in refs]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s, t=t: max(0.0, 1 - s / t))
              for o, t in zip(torch_opts, [4, 2, 4])]
    for step in range(4):
        grads = torch.randn(3, 5)
        active = torch.tensor([True, step < 2, step != 1])  # adapter 1 runs out; adapter 2 sits one out
        grad.copy_(grads * active.unsqueeze(1))
        frozen = mine[~active].clone()
        opt.step(active)
        assert torch.equal(mine[~active], frozen)
        for k in range(3):
            if active[k]:
                refs[k].grad = grads[k].clone()
                torch_opts[k].step()
                scheds[k].step()
    # adapter 2 took 3 steps on the schedule of 4 it was given, like its torch twin
    for k in range(3):
        assert torch.allclose(mine[k], refs[k].detach(), atol=1e-6)


def test_packing_keeps_examples_apart_and_micro_batches_respect_the_budget(tokenizer):
    examples = lm_examples(tokenizer, [" ".join(["word"] * n) for n in (3, 40, 5, 12, 7, 30)], 64)
    row = pack(examples[:3], adapter=2)
    assert row.input_ids == [t for e in examples[:3] for t in e.input_ids]
    starts = [0, len(examples[0].input_ids), len(examples[0].input_ids) + len(examples[1].input_ids)]
    assert [i for i, p in enumerate(row.positions) if p == 0] == starts
    assert all(row.labels[i] == -100 for i in starts)  # no target across an example boundary
    rows = [pack([e], k) for k, e in enumerate(examples)]
    parts = micro_batches(rows, max_tokens=48)
    assert sorted(r.adapter for part in parts for r in part) == list(range(6))
    for part in parts:
        assert max(len(r.input_ids) for r in part) * len(part) <= 48 or len(part) == 1


def test_micro_batches_keep_short_rows_away_from_long_ones(tokenizer):
    short = [pack(lm_examples(tokenizer, ["a b c d e"], 64), k) for k in range(6)]
    long = [pack(lm_examples(tokenizer, [" ".join(["word"] * 200)], 512), 6)]
    parts = micro_batches(short + long, max_tokens=4096)
    assert len(parts) == 2 and [r.adapter for r in parts[1]] == [6]  # not six short rows padded to 200


def test_k_comes_from_memory_and_never_exceeds_the_work(tiny, monkeypatch):
    import seal.core.bank_size as ml

    size = ml.lora_size(tiny.model, _cfg())
    monkeypatch.setattr(ml, "available_memory", lambda: 64 << 30)
    assert ml.choose_adapters(size, 0, n_jobs=5, cap=32) == 5
    assert ml.choose_adapters(size, 0, n_jobs=500, cap=32) == 32
    # room for about 10 adapters beside the activations of one forward pass, in half the free memory
    activations = 4096 * ml.bytes_per_token(tiny.model)
    monkeypatch.setattr(ml, "available_memory", lambda: 2 * (activations + 10 * 16 * size))
    assert ml.choose_adapters(size, activations, n_jobs=500, cap=1024) == 10
    assert ml.choose_adapters(size, activations, n_jobs=500, cap=1024, budget=activations + 3 * 16 * size) == 3
    monkeypatch.setattr(ml, "available_memory", lambda: 0)
    assert ml.choose_adapters(size, activations, n_jobs=500, cap=1024) == 1  # never zero


def test_k_is_the_devices_fastest_within_memory_and_time_and_does_not_collapse(tiny, monkeypatch):
    import seal.core.bank_size as ml
    from seal.core.config import InnerLoopBase

    monkeypatch.setattr(ml, "available_memory", lambda: 64 << 30)
    cfg = InnerLoopBase(max_batch_seconds=100)
    assert ml.throughput_k(tiny) == ml.CPU_K
    k = lambda c, n, **kw: ml.adapters_per_batch(c, n, ml.widest_batch(tiny, c, n), **kw)
    assert k(cfg, 500) == min(ml.CPU_K, ml.FIRST_BATCH)  # time per evaluation unknown
    assert k(cfg, 500, seconds_per_eval=1.0) == ml.CPU_K  # fast: the throughput K
    assert k(cfg, 2, seconds_per_eval=1.0) == 2  # never more than the work left
    # slow evaluations narrow a batch to what fits in 100 s, but never below FIRST_BATCH
    wide = cfg.model_copy(update=dict(adapters_per_batch=None))
    monkeypatch.setattr(ml, "CPU_K", 16)
    assert k(wide, 500, seconds_per_eval=10.0) == 10
    assert k(wide, 500, seconds_per_eval=60.0) == ml.FIRST_BATCH
    # a batch that kept to its time does not narrow the next one, however slow its evaluations were
    assert k(wide, 500, seconds_per_eval=20.0, previous=(8, 95.0)) == 8
    assert k(wide, 500, seconds_per_eval=20.0, previous=(8, 180.0)) == 5  # it ran over
    assert k(cfg.model_copy(update=dict(adapters_per_batch=7)), 500) == 7
    # an explicit memory budget caps K: here room for 2 adapters beside one forward pass
    need = ml.activation_bytes(tiny.model, cfg) + 2 * 16 * ml.lora_size(tiny.model, cfg)
    small = cfg.model_copy(update=dict(memory_budget=need / 2**30))
    assert ml.widest_batch(tiny, small, 500) == 2
    assert k(small, 500, seconds_per_eval=1.0) == 2


def test_a_memory_budget_too_small_for_one_forward_pass_is_refused(tiny):
    import seal.core.bank_size as ml
    from seal.core.config import ConfigError, InnerLoopBase

    cfg = InnerLoopBase(memory_budget=1e-4)
    with pytest.raises(ConfigError, match=r"inner_loop\.memory_budget 0\.0001 GiB.*gradient_checkpointing"):
        ml.check_memory_budget(tiny.model, cfg)
    ml.check_memory_budget(tiny.model, cfg.model_copy(update=dict(memory_budget=None)))  # no budget: nothing to check
    plain, checkpointed = ml.bytes_per_token(tiny.model), ml.bytes_per_token(tiny.model, checkpointed=True)
    assert checkpointed < plain


def test_lora_dropout_is_off_when_answering(tiny):
    """Dropout acts while an adapter trains; once the model is in eval mode, the bank's answers are fixed."""
    cfg = _cfg(dropout=0.5)
    datasets = [lm_examples(tiny.tokenizer, t, 64) for t in TEXTS[:2]]
    with adapter_bank(tiny, cfg, [1, 2]) as bank:
        train_bank(tiny, bank, datasets, cfg, seeds=[1, 2])
        # make the adapters' contribution large, so that dropout on it would show
        for b in bank.b:
            b.data.normal_()
        prompts, golds = ["The lighthouse of Varn", "Quill moss grows"], ["was lit", "on slate"]
        first = completion_logprobs(tiny, prompts, golds, adapter_rows=[0, 1])
        again = completion_logprobs(tiny, prompts, golds, adapter_rows=[0, 1])
    assert first == again


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_examples_never_attend_to_each_other_under_each_attention(tiny, impl):
    """Two rows of packed examples in one pass (the case transformers' own detection from position_ids
    misses under flash attention): every example's loss equals its loss alone, and the same tokens
    without the segment boundaries give other losses, so a leak would show."""
    from seal.core.multi_lora import collate_packed, per_adapter_loss
    from seal.core.objectives import LanguageModelling
    from seal.core.training import collate, lm_loss

    tiny.model.config._attn_implementation = impl
    with torch.no_grad():  # sharper attention and output: a random model otherwise barely reads its context
        for name, p in tiny.model.named_parameters():
            if "q_proj" in name or "lm_head" in name or "embed_tokens" in name:
                p.mul_(8)
    examples = [lm_examples(tiny.tokenizer, t, 64) for t in TEXTS[:2]]
    rows = [pack(e, k) for k, e in enumerate(examples)]
    batch = collate_packed(rows, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        _, shares = per_adapter_loss(tiny.model, batch, rows, LanguageModelling(), 2)
        alone = torch.stack([lm_loss(tiny.model, collate(group, tiny.tokenizer.pad_token_id)) for group in examples])
        assert torch.allclose(shares, alone, rtol=1e-5), impl
        # the same rows read as one sequence each: the later examples see the earlier ones
        flat = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]))
        _, leaky = per_adapter_loss(tiny.model, flat, rows, LanguageModelling(), 2)
    assert (leaky - alone).abs().max() > 50 * (shares - alone).abs().max()  # a leak is far outside the rounding


def test_the_bank_refuses_an_attention_it_cannot_mask(tiny):
    from seal.core.config import ConfigError

    tiny.model.config._attn_implementation = "flash_attention_2"
    with adapter_bank(tiny, _cfg(), [1]) as bank, pytest.raises(ConfigError, match="flash_attention_2"):
        train_bank(tiny, bank, [lm_examples(tiny.tokenizer, TEXTS[0], 64)], _cfg(), seeds=[1])
