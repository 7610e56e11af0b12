"""docs/extending.md's worked example runs as written: a new objective registered in a few lines is
trained by both training paths, and with eps = 0 it is the LM loss."""

import re

import pytest
from test_objectives import assert_bank_trains_as_alone, train_alone

from helpers import ROOT
from seal.core.config import LoraTrainConfig
from seal.core.objectives import OBJECTIVES, make_objective
from seal.core.training import lm_examples

TEXTS = ["The lighthouse of Varn was lit in 1821.", "Its keeper was Ida Morrow.", "Barges pay a toll of three coins."]


@pytest.fixture
def smoothed():
    """The page's code block, executed; the objective it registers is removed again afterwards."""
    page = (ROOT / "docs" / "extending.md").read_text()
    block = re.search(r"## A worked example.*?```python\n(.*?)```", page, re.S).group(1)
    scope: dict = {}
    exec(compile(block, "docs/extending.md", "exec"), scope)
    yield scope["Smoothed"]
    OBJECTIVES.pop("smoothed", None)


def test_the_worked_objective_trains_on_both_paths_and_is_lm_at_eps_0(tiny, smoothed):
    cfg = LoraTrainConfig(rank=4, alpha=8, lr=5e-3, epochs=2, batch_size=2, target_modules=["q_proj", "v_proj"])
    assert isinstance(make_objective("smoothed"), smoothed) and make_objective("smoothed").describe() == {"name": "smoothed", "eps": 0.1}
    data = lm_examples(tiny.tokenizer, TEXTS, 64)
    lm, _ = train_alone(tiny, data, cfg, 3, make_objective("lm"))
    zero, _ = train_alone(tiny, data, cfg, 3, smoothed(eps=0.0))
    assert zero.first_loss == pytest.approx(lm.first_loss, rel=1e-5) and zero.last_loss == pytest.approx(lm.last_loss, rel=1e-4)
    objective = smoothed(eps=0.1)
    seeds, datasets = [5, 6], [data[:2], data]
    # the smoothing term counts (a random model is near uniform, so it counts little: 2.7e-3 here)
    assert train_alone(tiny, data, cfg, 3, objective)[0].first_loss != pytest.approx(lm.first_loss, abs=1e-3)
    # The smoothing term sums the whole vocabulary (49k terms) in an order that depends on the batch's
    # layout; with AVX-512 kernels that moves a weight by up to 2e-5 after the steps (within 1e-5 on AVX2).
    # A leak between the bank's adapters moves them by orders of magnitude more.
    assert_bank_trains_as_alone(tiny, datasets, cfg, seeds, objective, atol=5e-5)
