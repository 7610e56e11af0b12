"""What several test files share: the tiny configuration as command-line overrides, the example
documents, and ARC's tiny-run settings. (conftest.py has the fixtures.)"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
EXAMPLES = ROOT / "examples" / "documents"


def overrides(cfg) -> list[str]:
    args = []
    for key in ["model.name", "runs_dir", "model.precision", "data.train_passages", "data.eval_passages",
                "self_edit.max_new_tokens", "answer.max_new_tokens", "answer.max_questions",
                "inner_loop.epochs", "inner_loop.rank", "inner_loop.alpha", "restem.k", "restem.sft.epochs",
                "restem.sft.rank", "restem.sft.alpha", "eval.bootstrap"]:
        section, *rest = key.split(".")
        value = getattr(cfg, section)
        for part in rest:
            value = getattr(value, part)
        args += ["--set", f"{key}={value}"]
    return args


USABLE = '{"use_basic_augmentations": false, "strategy": "outputs", "learning_rate": 0.001, "num_train_epochs": 1}'


def arc_args(tiny_dir, tmp_path, *extra) -> list[str]:
    sets = [f"model.name={tiny_dir}", f"runs_dir={tmp_path / 'runs'}", "model.precision=fp32",
            "data.train_ids=[6150a2bd, 5582e5ca]", "data.eval_ids=[66e6c45b]",
            "inner_loop.rank=4", "inner_loop.alpha=8", "inner_loop.max_examples=3",
            "inner_loop.colour_permutations=1", "inner_loop.example_permutations=0",
            "predict.views=[identity, transpose]", "predict.max_new_tokens=16",
            # a prefill that is a whole JSON object makes the random model's self-edits usable
            f"self_edit.prefill='{USABLE}'", "self_edit.max_new_tokens=4", "self_edit.max_resamples=0",
            "restem.k=2", "restem.keep=best", "restem.min_reward=null",
            "restem.sft.epochs=1", "restem.sft.rank=4", "restem.sft.alpha=8",
            "eval.n_self_edits=1", "eval.bootstrap=200", *extra]
    return [a for s in sets for a in ("--set", s)]
