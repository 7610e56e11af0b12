"""How fast the project samples self-edits and answers questions, against what the same machine computes
in a forward pass, in one run; and where the time of one decode step goes.

    .venv/bin/python benchmarks/generation_speed.py                       # the embedded model, ~5 min on 2 cores
    .venv/bin/python benchmarks/generation_speed.py --batches 8,32 --new-tokens 128
    .venv/bin/python benchmarks/generation_speed.py --only step --step-batch 32   # compiled or not, ~5 min
    python benchmarks/generation_speed.py --arch llama-3.2-1b --device cuda

The measurements, all on the same model (the embedded one, or a random-weight --arch):

  forward   a teacher-forced forward pass without gradient over B x L positions (B = 8, L = 160):
            positions/s, the rate the matmuls allow;
  sample    `generation.generate` as ReST-EM writes self-edits: self-edit prompts of the built-in
            passages (about 200 tokens in the chat template), each --samples times in a row (the k
            self-edits of a passage), temperature 1, top-p 0.95, up to --new-tokens new tokens, at each
            batch size in --batches;
  answer    `generation.generate` as questions are answered after the inner loop: closed-book answer
            prompts (about 40 tokens), greedy, up to 32 new tokens, stopping at a newline, each row
            through its own adapter of a bank of K adapters, at each batch size.

  score     `generation.completion_logprobs` as answers are graded: each question's prompt with its gold
            answer and up to 8 distractor spans of its passage (answer discrimination), closed-book
            and open-book, through the K adapters: completions/s with a row per completion and with
            the completions of a prompt sharing its row, and the largest difference between the two.
  step      (only when named in --only) the steady cost of one decode step at --step-batch rows after a
            self-edit prompt, sampling: the project's decoder, and Hugging Face's `generate` with a
            static cache, as is and compiled by torch.compile: does a compiled decode step pay on this
            device, and what does compiling cost (the first call)?

For sample and answer: generated tokens/s (tokens the rows kept), decoded positions/s (every row of every decode
step, finished or not: what the model computed), both as a share of the forward rate, and where the
call's time went (the prompts' prefill, decode steps of a full batch and of fewer rows, the time outside
the forward passes). Then one
decode step profiled (a KV-cached step of batch 8 after a self-edit prompt): the share of its time in
the matmuls (of which the vocabulary projection, timed alone), attention, the cache, sampling (softmax,
sort, top-p, multinomial) and the rest (Python and the dispatcher: the wall time no operator accounts
for).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from harness import arch_model, machine, save
from seal.core.config import load_config
from seal.core.generation import completion_logprobs, format_prompt, generate, hf_generate, resolve_precision, use_chat
from seal.core.models import load_configured
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain
from seal.knowledge.grading import distractors
from seal.knowledge.prompts import answer_prompt

SHAPES = {"forward": (8, 160)}
SAMPLING = dict(temperature=1.0, top_p=0.95)


def forward_rate(lm, precision: str, batch: int, length: int, repeats: int = 3) -> float:
    """Positions/s of a teacher-forced forward pass without gradient (the best of `repeats`)."""
    from seal.core.generation import autocast, half_weights

    ids = torch.randint(10, len(lm.tokenizer) - 10, (batch, length), device=lm.device)
    best = float("inf")
    with torch.no_grad(), half_weights(lm.model, precision), autocast(precision, lm.device):
        lm.model(input_ids=ids[:, :16])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            lm.model(input_ids=ids)
            best = min(best, time.perf_counter() - start)
    return batch * length / best


def timed_generate(lm, prompts: list[str], batch: int, new_tokens: int, precision: str, engine=generate, **kw) -> dict:
    """One call of `engine` over `prompts` at this batch size: tokens kept and positions decoded a second
    (every row of every decode step, counted at the model's input, finished or not), and where the call's
    time went: the prompts' forward passes (prefill), the decode steps of a full batch and of fewer rows
    (a batch that shrank once no prompt waited), and the time outside any forward pass (sampling, the
    cache's joins and compactions, Python)."""
    passes = []  # [rows, positions a row, start, end] of each forward pass

    def before(_, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None:
            passes.append([ids.shape[0], ids.shape[1], time.perf_counter(), None])

    def after(*_):
        if passes and passes[-1][3] is None:
            passes[-1][3] = time.perf_counter()

    hooks = [lm.model.register_forward_pre_hook(before, with_kwargs=True), lm.model.register_forward_hook(after)]
    try:
        start = time.perf_counter()
        out = engine(lm, prompts, max_new_tokens=new_tokens, batch_size=batch, precision=precision, **kw)
        seconds = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    kept = sum(g.n_tokens for g in out)
    steps = [(rows, end - begin) for rows, width, begin, end in passes if width == 1]
    prefill = sum(end - begin for _, width, begin, end in passes if width > 1)
    full = sum(t for rows, t in steps if rows >= batch)
    fewer = sum(t for rows, t in steps if rows < batch)
    # the prefill's forward pass gives each row its first token; every later one is a decode step
    positions = sum(rows for rows, _ in steps) + len(prompts)
    return dict(batch=batch, rows=len(prompts), seconds=seconds, tokens=kept, decoded=positions,
                tokens_per_s=kept / seconds, decoded_per_s=positions / seconds, texts=[g.text for g in out],
                prompt_tokens=sum(len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts),
                time_shares=dict(prefill=prefill / seconds, full_batch_steps=full / seconds,
                                 fewer_rows_steps=fewer / seconds,
                                 outside_forward=(seconds - prefill - full - fewer) / seconds),
                steps_with_fewer_rows=sum(rows < batch for rows, _ in steps), steps=len(steps))


def timed_scores(lm, asked: list[tuple[str, list[str], int]], precision: str, batch: int, share: bool) -> dict:
    """`completion_logprobs` over every (prompt, completions, adapter) of `asked`, one call: completions/s."""
    prompts = [p for p, cs, _ in asked for _ in cs]
    start = time.perf_counter()
    scores = completion_logprobs(lm, prompts, [c for _, cs, _ in asked for c in cs], batch_size=batch,
                                 precision=precision, adapter_rows=[k for _, cs, k in asked for _ in cs],
                                 share_prompts=share)
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, completions=len(prompts), per_s=len(prompts) / seconds, scores=scores,
                prompt_tokens=sum(len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p, _, _ in asked) / len(asked))


def profile_decode_step(lm, prompt: str, precision: str, batch: int = 8, steps: int = 8) -> dict:
    """Shares of one KV-cached decode step's wall time by kind of operator (see the module's docstring)."""
    from torch.profiler import ProfilerActivity, profile

    from seal.core.decoding import Nucleus, decode
    from seal.core.generation import autocast, half_weights

    nucleus = Nucleus(SAMPLING["temperature"], SAMPLING["top_p"], list(range(batch)), lm.device)
    prof, calls = profile(activities=[ProfilerActivity.CPU]), []

    def pick(logits, rows):  # called once a forward pass: the profile spans `steps` decode steps after 2 warm-up ones
        calls.append(time.perf_counter())
        if len(calls) == 3:
            prof.start()
        if len(calls) == 3 + steps:
            prof.stop()
        return nucleus(logits, rows)

    ids = [lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]] * batch
    with torch.no_grad(), half_weights(lm.model, precision), autocast(precision, lm.device):
        decode(lm.model, ids, max_new_tokens=steps + 4, slots=batch, pick=pick, pad_id=lm.tokenizer.pad_token_id,
               end_ids=set(), cache_dtype=torch.bfloat16 if precision == "bf16" else None)
    wall = calls[2 + steps] - calls[2]
    kinds = {"matmuls": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
             "attention": ("scaled_dot_product", "aten::_efficient_attention", "aten::_scaled_dot_product"),
             "cache": ("aten::cat", "aten::index_copy", "aten::copy_", "aten::slice", "aten::_to_copy"),
             "sampling": ("aten::softmax", "aten::_softmax", "aten::sort", "aten::topk", "aten::cumsum",
                          "aten::multinomial", "aten::gather", "aten::where")}
    shares = dict.fromkeys([*kinds, "other operators"], 0.0)
    total = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        total += seconds
        kind = next((k for k, names in kinds.items() if any(event.key.startswith(n) for n in names)), "other operators")
        shares[kind] += seconds
    shares = {k: v / wall for k, v in shares.items()}
    shares["python and dispatch (no operator)"] = max(0.0, 1 - total / wall)
    with torch.no_grad(), half_weights(lm.model, precision), autocast(precision, lm.device):
        hidden = torch.randn(batch, 1, lm.model.config.hidden_size, device=lm.device)
        head = lm.model.get_output_embeddings()
        head(hidden)
        start = time.perf_counter()
        for _ in range(steps):
            head(hidden)
        shares["of the matmuls: the vocabulary projection"] = (time.perf_counter() - start) / wall
    return dict(seconds_per_step=wall / steps, batch=batch, shares=shares)


def step_costs(lm, prompt: str, precision: str, batch: int, steps: int) -> list[dict]:
    """The steady cost of one decode step at `batch` rows after `prompt`, sampling, no row ending: the
    project's decoder, and Hugging Face's `generate` with a static cache (a fixed-size cache, the shape
    torch.compile needs) run as is and compiled (`CompileConfig`, forced on for every device). Each
    engine runs twice on the same shapes; the first call's seconds include any compilation, the steps
    are timed in the second (the median interval between two sampled tokens)."""
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.configuration_utils import CompileConfig

    from seal.core.decoding import Nucleus, decode
    from seal.core.generation import autocast, half_weights

    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stamps: list[float] = []

    class Stamp(LogitsProcessor):  # called once a decode step, before the sampling
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    def seal_call():
        nucleus = Nucleus(SAMPLING["temperature"], SAMPLING["top_p"], list(range(batch)), lm.device)

        def pick(logits, rows):
            stamps.append(time.perf_counter())
            return nucleus(logits, rows)

        decode(lm.model, [ids] * batch, max_new_tokens=steps, slots=batch, end_ids=set(), pick=pick,
               pad_id=lm.tokenizer.pad_token_id, cache_dtype=torch.bfloat16 if precision == "bf16" else None)

    def hf_call(compiled: bool):
        extra = dict(disable_compile=True)
        if compiled:  # one configuration for both calls; forced on, since transformers compiles on GPUs only
            extra = dict(compile_config=CompileConfig(fullgraph=True, dynamic=False))
            extra["compile_config"]._compile_all_devices = True

        def call():
            enc = torch.tensor([ids] * batch, device=lm.device)
            lm.model.generate(input_ids=enc, attention_mask=torch.ones_like(enc), max_new_tokens=steps,
                              min_new_tokens=steps, do_sample=True, top_k=None, cache_implementation="static",
                              logits_processor=LogitsProcessorList([Stamp()]), pad_token_id=lm.tokenizer.pad_token_id,
                              **SAMPLING, **extra)
        return call

    engines = {"seal (dynamic cache, eager)": seal_call, "hf (static cache, eager)": hf_call(False),
               "hf (static cache, compiled)": hf_call(True)}
    rows = []
    for name, call in engines.items():
        print(f"decode steps, batch {batch}, {name} ...", flush=True)
        with torch.no_grad(), half_weights(lm.model, precision), autocast(precision, lm.device):
            start = time.perf_counter()
            call()
            first = time.perf_counter() - start
            stamps.clear()
            call()
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps))  # each a decode step and its sampling
        rows.append(dict(engine=name, batch=batch, prompt_tokens=len(ids), steps=steps, first_call_seconds=first,
                         seconds_per_step=gaps[len(gaps) // 2]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="8,32", help="generation batch sizes, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=256, help="self-edit length limit (as self_edit.max_new_tokens)")
    parser.add_argument("--prompts", type=int, default=32, help="self-edit prompts and questions per measurement")
    parser.add_argument("--engines", default="hf,seal",
                        help="decoders to measure: hf (Hugging Face's generate, batch by batch), seal (core/decoding.py)")
    parser.add_argument("--only", default="forward,sample,answer,score,profile",
                        help="measurements to make, comma-separated (forward is always made; step, the "
                             "steady decode step of each engine with and without torch.compile, only when named)")
    parser.add_argument("--step-batch", type=int, default=32, help="batch of the steady decode steps (--only step)")
    parser.add_argument("--step-tokens", type=int, default=64, help="decode steps of each call (--only step)")
    parser.add_argument("--profile-batch", type=int, default=8, help="batch of the profiled decode step")
    parser.add_argument("--k", type=int, default=4, help="adapters in the bank the answers go through")
    parser.add_argument("--samples", type=int, default=4, help="self-edits sampled from each prompt, one after another (restem.k)")
    parser.add_argument("--arch", default=None, help="a random-weight model of this architecture (benchmarks/archs/NAME.json)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--set", action="append", default=[], help="a configuration override, e.g. model.precision=fp32")
    parser.add_argument("--out", default="benchmarks/results/generation_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(None, [*( [f"model.device={args.device}"] if args.device else []), *args.set])
    lm = load_configured(config.model)
    if args.arch:
        lm = arch_model(args.arch, lm.tokenizer, config.model.dtype, config.model.device)
    precision = resolve_precision(config.model.precision, lm.device)
    domain = KnowledgeDomain(config)
    passages = load_builtin()
    chat = use_chat(lm, config.model.chat_template)
    # as ReST-EM lays them out: each passage's prompt --samples times in a row (its k self-edits)
    self_edit_prompts = [format_prompt(lm, domain.self_edit_prompt(passages[i // args.samples % len(passages)]), chat=chat)
                         for i in range(args.prompts)]
    questions = [(p, q) for p in passages for q in p.questions]
    answer_prompts = [format_prompt(lm, answer_prompt(config.answer.prompt_style, p.title, q.question), chat=False)
                      for p, q in (questions[i % len(questions)] for i in range(args.prompts))]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"device {lm.device}, threads {torch.get_num_threads()}, weights {lm.dtype}, autocast {precision}, "
          f"model {args.arch or config.model.name}", flush=True)

    rate = forward_rate(lm, precision, *SHAPES["forward"])
    print(f"forward: {rate:.0f} positions/s (batch {SHAPES['forward'][0]} x {SHAPES['forward'][1]})", flush=True)
    engines = {"hf": hf_generate, "seal": generate}
    only = set(args.only.split(","))
    rows = []
    for b in (batches if "sample" in only else []):
        for name in args.engines.split(","):
            print(f"sampling, batch {b}, {name} ...", flush=True)
            rows.append(dict(what="sample self-edits", decoder=name, **timed_generate(
                lm, self_edit_prompts, b, args.new_tokens, precision, engines[name], seed=0, **SAMPLING)))
    from seal.core.multi_lora import adapter_bank

    scoring = []
    with adapter_bank(lm, config.inner_loop, list(range(args.k))):
        for b in (batches if "answer" in only else []):
            for name in args.engines.split(","):
                print(f"answering, batch {b}, through {args.k} adapters, {name} ...", flush=True)
                adapters = [i % args.k for i in range(len(answer_prompts))]
                rows.append(dict(what=f"answer ({args.k} adapters)", decoder=name, **timed_generate(
                    lm, answer_prompts, b, 32, precision, engines[name], stop_at_newline=True, adapter_rows=adapters)))
        for book in (("closed book", "open book") if "score" in only else ()):
            asked = []
            for i, (p, q) in enumerate(questions[i % len(questions)] for i in range(args.prompts)):
                others = [o.answers[0] for o in p.questions if o is not q]
                prompt = format_prompt(lm, answer_prompt(config.answer.prompt_style, p.title, q.question,
                                                         p.context if book == "open book" else None), chat=False)
                asked.append((prompt, [q.answers[0], *distractors(p.context, list(q.answers), others, 8)], i % args.k))
            print(f"scoring, {book}, {len(asked)} questions ...", flush=True)
            alone, shared = (timed_scores(lm, asked, precision, config.answer.batch_size, share) for share in (False, True))
            scoring.append(dict(book=book, questions=len(asked), completions=alone["completions"],
                                prompt_tokens=alone["prompt_tokens"], alone_per_s=alone["per_s"],
                                shared_per_s=shared["per_s"], largest_difference=max(
                                    abs(a - b) for a, b in zip(alone["scores"], shared["scores"]))))
    for r in rows:  # greedy answers: the same text as Hugging Face's generate at the same batch size?
        hf = next((h for h in rows if h["decoder"] == "hf" and h["what"] == r["what"] and h["batch"] == r["batch"]), None)
        r["same_as_hf"] = (sum(a == b for a, b in zip(r["texts"], hf["texts"])) if hf and r["what"].startswith("answer")
                           else None)
    steady = (step_costs(lm, self_edit_prompts[0], precision, args.step_batch, args.step_tokens)
              if "step" in only else [])
    step = profile_decode_step(lm, self_edit_prompts[0], precision, batch=args.profile_batch) if "profile" in only else None

    print(f"\nforward pass: {rate:.0f} positions/s; {machine()['cpu']}, autocast {precision}")
    if rows:
        print("\n| what | decoder | batch | prompt tokens | generated tokens/s | decoded positions/s | generated / forward "
              "| decoded / forward | answers as hf's |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            same = "-" if r["same_as_hf"] is None else f"{r['same_as_hf']} of {r['rows']}"
            print(f"| {r['what']} | {r['decoder']} | {r['batch']} | {r['prompt_tokens']:.0f} | {r['tokens_per_s']:.1f} | "
                  f"{r['decoded_per_s']:.1f} | {r['tokens_per_s'] / rate:.2f} | {r['decoded_per_s'] / rate:.2f} | {same} |")
        print("\n| what | decoder | batch | seconds | prefill | decode steps, full batch | decode steps, fewer rows "
              "| outside the forward passes | steps with fewer rows |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            t = r["time_shares"]
            print(f"| {r['what']} | {r['decoder']} | {r['batch']} | {r['seconds']:.1f} | {t['prefill']:.2f} | "
                  f"{t['full_batch_steps']:.2f} | {t['fewer_rows_steps']:.2f} | {t['outside_forward']:.2f} | "
                  f"{r['steps_with_fewer_rows']} of {r['steps']} |")
    if scoring:
        print(f"\n| scoring ({args.k} adapters) | questions | prompt tokens | completions | a row per completion: "
              "completions/s | sharing the prompt's row: completions/s | speed-up | largest difference |")
        print("|---|---|---|---|---|---|---|---|")
        for r in scoring:
            print(f"| {r['book']} | {r['questions']} | {r['prompt_tokens']:.0f} | {r['completions']} | {r['alone_per_s']:.1f} "
                  f"| {r['shared_per_s']:.1f} | {r['shared_per_s'] / r['alone_per_s']:.2f} | {r['largest_difference']:.1e} |")
    if steady:
        print("\n| decode step engine | batch | prompt tokens | first call s | ms per step | tokens/s | tokens / forward |")
        print("|---|---|---|---|---|---|---|")
        for r in steady:
            per_s = r["batch"] / r["seconds_per_step"]
            print(f"| {r['engine']} | {r['batch']} | {r['prompt_tokens']} | {r['first_call_seconds']:.1f} | "
                  f"{1000 * r['seconds_per_step']:.0f} | {per_s:.1f} | {per_s / rate:.2f} |")
    if step:
        print(f"\none decode step (batch {step['batch']}, after a self-edit prompt): {1000 * step['seconds_per_step']:.0f} ms\n")
        print("| part of a decode step | share of its wall time |")
        print("|---|---|")
        for k, v in step["shares"].items():
            print(f"| {k} | {v:.2f} |")
    save(args, rows, forward_positions_per_s=rate, precision=precision, decode_step=step, scoring=scoring,
         steady_steps=steady)


if __name__ == "__main__":
    main()
