"""Notebook 04's from-scratch `orpo_loss` (the cell a learner reads) equals TRL's ORPO loss.

The function is taken from the committed notebook's source and exec'd, so the cell the learner sees is the one
tested; TRL's side is `ORPOTrainer.odds_ratio_loss`, the function ORPOTrainer's loss is built from (loss = NLL -
mean of its first output). The executed notebook also prints both numbers on a batch of the run (checked in
tests/test_e2e.py).
"""

import json
import re
import types
from pathlib import Path

import pytest
import torch
from trl.experimental.orpo import ORPOTrainer

NOTEBOOK_04 = Path(__file__).resolve().parent.parent / "notebooks" / "04_orpo_training.ipynb"


@pytest.fixture(scope="module")
def orpo_loss():
    cells = ["".join(c["source"]) for c in json.loads(NOTEBOOK_04.read_text())["cells"] if c["cell_type"] == "code"]
    (cell,) = [c for c in cells if "def orpo_loss(" in c]
    definition = re.search(r"^def orpo_loss\(.*?\n(?=\S)", cell, re.S | re.M).group(0)
    namespace = {"torch": torch, "F": torch.nn.functional}
    exec(definition, namespace)
    return namespace["orpo_loss"]


@pytest.mark.parametrize("beta", [0.1, 0.25, 1.0])
def test_from_scratch_loss_equals_trls(orpo_loss, beta):
    torch.manual_seed(0)
    chosen = -torch.rand(64) * 3 - 1e-3   # mean token log-probs (float32, as TRL computes), < 0
    rejected = -torch.rand(64) * 3 - 1e-3
    nll = torch.tensor(1.2345)
    trainer = types.SimpleNamespace(beta=beta, accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    trl_terms, *_ = ORPOTrainer.odds_ratio_loss(trainer, chosen, rejected)
    ours, odds_ratio_term, log_or = orpo_loss(chosen, rejected, nll, beta)
    assert ours.item() == pytest.approx((nll - trl_terms.mean()).item(), rel=1e-6)
    assert (beta * odds_ratio_term).item() == pytest.approx(-trl_terms.mean().item(), rel=1e-6)


def test_toy_numbers_behave_as_the_notebook_says(orpo_loss):
    """Equal answers give log OR = 0 and the term log 2; a far likelier chosen answer makes the term ~0."""
    p = torch.tensor([0.6]).log()
    _, term, log_or = orpo_loss(p, p, torch.tensor(0.0), 1.0)
    assert log_or.item() == pytest.approx(0.0) and term.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    _, term, _ = orpo_loss(torch.tensor([0.99]).log(), torch.tensor([0.01]).log(), torch.tensor(0.0), 1.0)
    assert term.item() < 1e-3
