"""The scale path on CPU: weight dtypes, chunked losses, gradient checkpointing, and updates undone
without a copy of the weights."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import warnings

import pytest
import torch

from helpers import ROOT
from seal.core import models, objectives, training
from seal.core.config import LoraTrainConfig
from seal.core.models import ModelLoadError, load_model, resolve_dtype
from seal.core.multi_lora import adapter_bank, train_bank
from seal.core.objectives import make_objective
from seal.core.training import collate, fresh_adapter, lm_examples, lm_loss, objective_loss, stashed, train

TEXTS = [
    ["The lighthouse of Varn was lit in 1821.", "Its keeper was Ida Morrow.", "It stands on basalt."],
    ["Quill moss grows only on north-facing slate.", "It turns red in frost."],
]
CPU = torch.device("cpu")


def _cfg(**kw) -> LoraTrainConfig:
    base = dict(rank=4, alpha=8, lr=5e-3, epochs=2, batch_size=2, target_modules=["q_proj", "v_proj", "down_proj"])
    return LoraTrainConfig(**{**base, **kw})


def _lora_state(wrapped) -> dict[str, torch.Tensor]:
    return {n.removeprefix("base_model.model.").replace(".default", ""): p.detach().float().clone()
            for n, p in wrapped.named_parameters() if "lora_" in n}


def test_chunked_loss_equals_the_models_own_loss_and_gradient(tiny, monkeypatch):
    examples = lm_examples(tiny.tokenizer, TEXTS[0] + TEXTS[1], 64)
    batch = collate(examples, tiny.tokenizer.pad_token_id)
    cfg = _cfg()
    seen = []
    head = tiny.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, o: seen.append(o.shape[0] if o.dim() == 2 else o.shape[0] * o.shape[1]))
    monkeypatch.setattr(objectives, "LOGIT_CHUNK", 7)  # several chunks of target positions
    grads = []
    for use_chunks in (False, True):
        with fresh_adapter(tiny, cfg, seed=3) as wrapped:
            wrapped.train()
            loss = lm_loss(wrapped, batch) if use_chunks else wrapped(**batch).loss
            loss.backward()
            grads.append((loss.item(), {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.grad is not None}))
    hook.remove()
    (full_loss, full_grad), (chunk_loss, chunk_grad) = grads
    assert chunk_loss == pytest.approx(full_loss, rel=1e-5)
    assert set(full_grad) == set(chunk_grad)
    for n in full_grad:
        assert torch.allclose(chunk_grad[n], full_grad[n], atol=1e-6, rtol=1e-4), n
    # the model's own loss computed all logits at once; the chunked one never more than 7 rows at a time
    assert seen[0] > 7 and seen[1:] and max(seen[1:]) <= 7


def test_weighted_loss_with_unit_weights_is_the_mean_of_per_example_means(tiny):
    examples = lm_examples(tiny.tokenizer, TEXTS[0], 64)
    batch = collate(examples, tiny.tokenizer.pad_token_id)
    one = [lm_loss(tiny.model, collate([e], tiny.tokenizer.pad_token_id)).item() for e in examples]
    got = objective_loss(tiny.model, batch, examples, make_objective("weighted")).item()
    assert got == pytest.approx(sum(one) / len(one), rel=1e-5)


def test_a_batch_without_targets_has_a_nan_loss_not_an_error(tiny):
    from seal.core.training import Example

    batch = collate([Example([5, 6, 7], [-100, -100, -100])], tiny.tokenizer.pad_token_id)
    with fresh_adapter(tiny, _cfg(), seed=0) as wrapped:
        loss = lm_loss(wrapped, batch)
        loss.backward()  # part of the graph: the step is recorded as non-finite, not a crash
    assert torch.isnan(loss)


def test_gradient_checkpointing_gives_the_same_adapters_in_both_inner_loops(tiny):
    datasets = [lm_examples(tiny.tokenizer, t, 64) for t in TEXTS]
    seeds = [5, 6]
    alone, batched = {}, {}
    for ckpt in (False, True):
        cfg = _cfg(gradient_checkpointing=ckpt, dropout=0.1)  # dropout: recomputed with the same mask
        with fresh_adapter(tiny, cfg, seeds[0]) as wrapped:
            train(wrapped, datasets[0], cfg, seed=seeds[0], pad_id=tiny.tokenizer.pad_token_id, device=CPU)
            alone[ckpt] = _lora_state(wrapped)
        with adapter_bank(tiny, cfg, seeds) as bank:
            train_bank(tiny, bank, datasets, cfg, seeds=seeds, max_tokens=40)
            batched[ckpt] = [bank.adapter_state(k) for k in range(2)]
        assert not tiny.model.model.gradient_checkpointing  # switched off again afterwards
    for name, value in alone[False].items():
        assert torch.allclose(alone[True][name], value, atol=1e-6), name
    for k in range(2):
        for name, value in batched[False][k].items():
            assert torch.allclose(batched[True][k][name], value, atol=1e-6), (k, name)


def _both_paths(lm, cfg, datasets, seeds):
    """Each adapter trained alone (PEFT) and all of them in one bank; LoRA tensors by bank name, in fp32."""
    alone = []
    for data, seed in zip(datasets, seeds):
        with fresh_adapter(lm, cfg, seed) as wrapped:
            assert all(p.dtype == torch.float32 for n, p in wrapped.named_parameters() if p.requires_grad)
            train(wrapped, data, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id, device=CPU)
            alone.append(_lora_state(wrapped))
    with adapter_bank(lm, cfg, seeds) as bank:
        assert bank.data.dtype == torch.float32
        train_bank(lm, bank, datasets, cfg, seeds=seeds)
        batched = [{n: v.float() for n, v in bank.adapter_state(k).items()} for k in range(len(seeds))]
    return alone, batched


def _distance(got: dict, expected: dict) -> float:
    """The largest relative distance ||got - expected|| / ||expected|| over the LoRA tensors."""
    return max(float((got[n] - v).norm() / v.norm()) for n, v in expected.items())


def test_both_inner_loops_agree_in_each_weight_dtype_and_lora_stays_fp32(tiny_dir):
    """fp32: the batched and one-at-a-time adapters agree to float rounding (relative distance 1e-5).
    bf16 weights round every layer's output to 8 bits of mantissa, which the two paths do in different
    places, and Adam turns tiny gradient differences into steps of up to the learning rate, so the
    scale of bf16 itself is the distance between the one-at-a-time adapter trained on bf16 weights and
    on fp32 ones (0.10 and 0.005 for the two adapters on this random tiny model). The two bf16 paths
    must agree far closer than that: within a quarter of it, adapter by adapter (measured: 0.04 and
    0.005 of it), so that the batched path rounds where PEFT's layers round. Where the CPU has native
    bf16 matmuls (AMX, AVX512-BF16), the kernels also round inside a matmul's accumulation, differently
    for the bank's shapes than for one adapter's, so the two paths are only as close as bf16 itself
    (measured: 1.04 and 0.65 of it): within 1.5 of it there, which a leak between adapters or a path
    that trains other weights (relative distances near 1) still fails."""
    cfg, seeds = _cfg(), [1, 2]
    bound = 1.5 if models.native_bf16_cpu() else 0.25
    got = {}
    for dtype in ("fp32", "bf16"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bf16 on a CPU without bf16 instructions warns once
            lm = load_model(str(tiny_dir), "cpu", dtype)
        assert lm.dtype == dtype and next(lm.model.parameters()).dtype == models.DTYPES[dtype]
        got[dtype] = _both_paths(lm, cfg, [lm_examples(lm.tokenizer, t, 64) for t in TEXTS], seeds)
    (alone32, batched32), (alone16, batched16) = got["fp32"], got["bf16"]
    for k in range(2):
        bf16_scale = _distance(alone16[k], alone32[k])
        assert 0 < bf16_scale < 0.3
        assert _distance(batched32[k], alone32[k]) <= 1e-5
        assert _distance(batched16[k], alone16[k]) <= bound * bf16_scale, k
        assert any(v.abs().max() > 0 for n, v in batched16[k].items() if "lora_B" in n)  # it trained


def test_dtype_choices_and_refusals(monkeypatch, tiny_dir):
    assert resolve_dtype("auto", CPU) == "fp32"
    assert resolve_dtype("fp32", CPU) == "fp32"
    with pytest.raises(ModelLoadError, match="fp16 is not supported on device 'cpu'"):
        resolve_dtype("fp16", CPU)
    with pytest.raises(ModelLoadError, match=r"model\.dtype 'fp8'"):
        resolve_dtype("fp8", CPU)
    monkeypatch.setattr(models, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(models, "_warned", set())
    with pytest.warns(UserWarning, match="much slower"):
        assert resolve_dtype("bf16", CPU) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert resolve_dtype("bf16", CPU) == "bf16"
    assert models.checkpoint_dtype(tiny_dir) == "fp32"


def test_fp16_on_cpu_is_one_line_before_any_run_directory(tiny_config, tmp_path):
    from typer.testing import CliRunner

    from seal.cli import app

    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["knowledge", "restem", "--set", f"model.name={tiny_config.model.name}",
                                      "--set", "model.dtype=fp16", "--set", f"runs_dir={runs}", "--set", "model.device=cpu"])
    assert result.exit_code != 0
    assert "fp16 is not supported on device 'cpu'" in result.output
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stashed_weights_come_back_bit_for_bit(tiny, dtype):
    tiny.model.to(dtype)
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    names = [n for n in before if "q_proj" in n]
    with stashed(tiny.model, names), torch.no_grad():
        for n, p in tiny.model.named_parameters():
            if n in names:
                p.add_(0.123)
    after = dict(tiny.model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before)


def test_merged_continual_steps_are_undone_exactly(tiny):
    from seal.core.continual import SequentialLora

    cfg = _cfg(epochs=1)
    data = lm_examples(tiny.tokenizer, TEXTS[0], 64)
    before = {n: p.detach().clone() for n, p in tiny.model.state_dict().items()}
    with SequentialLora(tiny, cfg, "merge") as seq:
        for step in (1, 2):
            train(seq.begin(seed=step), data, cfg, seed=step, pad_id=0, device=CPU)
            seq.commit()
        changed = tiny.model.state_dict()
        assert any(not torch.equal(changed[n], before[n]) for n in before)
    after = tiny.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)


@pytest.mark.skipif(models._libc is None, reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_pages_to_the_system():
    """Freed 1 MB tensors stay resident in glibc's heap while smaller live ones sit above them;
    `release_memory` gives them back. In a fresh process: in this one, earlier tests leave holes in
    the heap that the small tensors fill, so the freed ones end up at its top and glibc trims them
    by itself, and there would be nothing left to show."""
    code = """
import os, torch
from seal.core import models

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

big = torch.ones(7 * 2**20)  # 28 MB: glibc serves it by mmap, and freeing it raises the threshold
del big  # above 1 MB, as a run's first large activations do
models.release_memory()
freed, survivors = [], []
for _ in range(300):
    freed.append(torch.ones(256 * 1024))  # 1 MB, under glibc's mmap threshold
    survivors.append(torch.ones(16 * 1024))  # 64 kB, pins the heap above it
del freed
before = resident_mb()
models.release_memory()
print(before - resident_mb())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(done.stdout) > 200, done.stdout  # MB, of the 300 MB freed


def test_peak_memory_benchmark_sees_a_child_process_and_traces_it(tmp_path):
    """benchmarks/peak_memory.py measures the command's whole process tree, sampled and traced: here a
    child that holds 300 MB while its parent holds little."""
    root = ROOT
    child = "import time; x = bytearray(300 * 2**20); time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    out, trace = tmp_path / "row.json", tmp_path / "trace.csv"
    subprocess.run([sys.executable, str(root / "benchmarks/peak_memory.py"), "--interval", "0.1", "--json", str(out),
                    "--trace", str(trace), "--", sys.executable, "-c", parent], check=True, capture_output=True)
    row = json.loads(out.read_text())
    assert row["rc"] == 0 and row["tree_peak_rss_gib"] >= 300 / 1024 > row["tree_peak_rss_gib"] - 0.2
    lines = trace.read_text().splitlines()
    assert lines[0] == "time,seconds,rss_mib,pss_mib,anon_mib" and max(int(line.split(",")[2]) for line in lines[1:]) >= 300
    assert row["tree_peak_anon_gib"] >= 300 / 1024 - 0.02


def test_peak_memory_benchmark_tells_file_backed_pages_from_anonymous_ones(tmp_path):
    """A memory-mapped file that is read is resident, but file-backed: RSS, not the anonymous column."""
    root = ROOT
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\1" * (200 * 2**20))
    child = (f"import hashlib, mmap, time; f = open({str(data)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ); "
             "hashlib.md5(m).hexdigest(); time.sleep(1.5)")
    out = tmp_path / "row.json"
    subprocess.run([sys.executable, str(root / "benchmarks/peak_memory.py"), "--interval", "0.1", "--json", str(out),
                    "--", sys.executable, "-c", child], check=True, capture_output=True)
    row = json.loads(out.read_text())
    assert row["tree_peak_rss_gib"] >= 200 / 1024 and row["tree_peak_anon_gib"] < 100 / 1024


def test_a_row_longer_than_a_forward_pass_trains_alone_with_checkpointing(tiny):
    """`tokens_per_forward` bounds a pass's activations: rows cannot be split, so a longer one has a pass
    of its own with gradient checkpointing (and only it), which trains the same adapters."""
    long = " ".join(TEXTS[0] * 6)  # about 100 tokens: longer than the budget of 64
    datasets = [lm_examples(tiny.tokenizer, t, 256) for t in (TEXTS[0], [long, *TEXTS[1]])]
    seeds = [5, 6]
    cfg = _cfg(batch_size=1)
    calls = []  # (tokens in the pass, checkpointed) at each call of the first decoder layer

    def seen(layer, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        calls.append((hidden.shape[0] * hidden.shape[1], layer.gradient_checkpointing))

    hook = tiny.model.model.layers[0].register_forward_pre_hook(seen, with_kwargs=True)
    adapters = {}
    try:
        for budget in (4096, 64):
            calls.clear()
            with adapter_bank(tiny, cfg, seeds) as bank:
                train_bank(tiny, bank, datasets, cfg, seeds=seeds, max_tokens=budget)
                adapters[budget] = [bank.adapter_state(k) for k in range(2)]
            assert not tiny.model.model.gradient_checkpointing
            if budget == 4096:
                assert not any(on for _, on in calls)
    finally:
        hook.remove()
    assert any(n > 64 for n, _ in calls) and any(n <= 64 for n, _ in calls)
    assert all(on == (n > 64) for n, on in calls), calls
    for k in range(2):
        for name, value in adapters[4096][k].items():
            assert torch.allclose(adapters[64][k][name], value, atol=1e-6), (k, name)


def test_bf16_weights_are_cast_once_a_call_with_the_numbers_autocast_gives(tiny, monkeypatch):
    """Under bf16 autocast, generation, scoring and both training paths run on bf16 copies of the frozen
    linear weights, cast once a call: the same numbers as autocast casting at every matmul, the model's
    own parameters (and its tied embedding) back afterwards, and no gradient for a base weight."""
    from seal.core import generation, multi_lora
    from seal.core.generation import completion_logprobs, generate

    model = tiny.model
    assert not any(p.requires_grad for p in model.parameters())  # a loaded model is trained through adapters
    before = {n: p for n, p in model.named_parameters()}
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    prompts = ["The keeper of the lighthouse was", "Quill moss turns"]
    data = [lm_examples(tiny.tokenizer, texts, 64) for texts in TEXTS]
    cfg = _cfg(epochs=1)

    def run():
        out = dict(text=[g.text for g in generate(tiny, prompts, max_new_tokens=6, precision="bf16")],
                   logp=completion_logprobs(tiny, prompts, ["Ida Morrow.", "red in frost."], precision="bf16"))
        with adapter_bank(tiny, cfg, [1, 2]) as bank:
            stats = train_bank(tiny, bank, data, cfg, seeds=[1, 2], precision="bf16")
            out["bank"] = [(s.first_loss, s.last_loss) for s in stats] + [bank.adapter_state(k) for k in range(2)]
        with fresh_adapter(tiny, cfg, seed=1) as wrapped:
            s = train(wrapped, data[0], cfg, seed=1, pad_id=tiny.tokenizer.pad_token_id, device=CPU, precision="bf16")
            out["alone"] = [(s.first_loss, s.last_loss), _lora_state(wrapped)]
        return out

    shapes = [list(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def casts_of(out: dict) -> int:  # conversions of a tensor shaped like a linear weight, autocast's among them
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            out.update(run())
        return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
                   if e.key == "aten::_to_copy" and e.input_shapes and e.input_shapes[0] in shapes)

    cast_once, every_time = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without bf16 instructions warns once
        n_cast_once = casts_of(cast_once)
        for module in (generation, multi_lora, training):  # autocast alone, casting at every matmul
            monkeypatch.setattr(module, "half_weights", lambda model, precision: contextlib.nullcontext())
        n_every_time = casts_of(every_time)
    for key in ("text", "logp"):
        assert cast_once[key] == every_time[key], key
    for key in ("bank", "alone"):
        for got, want in zip(cast_once[key], every_time[key]):
            if isinstance(want, dict):
                assert all(torch.equal(got[n], want[n]) for n in want), key
            else:
                assert got == want, key
    assert n_cast_once < n_every_time / 2, (n_cast_once, n_every_time)
    assert {n: p for n, p in model.named_parameters()} == before  # the same Parameter objects
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
