"""Figures for notebooks 02, 04 and 05. Each returns the Figure and saves a PNG into the run directory.

ORPO's logged metrics (TRL 1.16), so the captions can say what a curve means:
  nll_loss              cross-entropy of the chosen answer (the SFT part of ORPO)
  log_odds_ratio        mean log sigmoid(log-odds(chosen) - log-odds(rejected)); the loss subtracts beta x this
  rewards/chosen|rejected  beta x mean token log-prob of each answer (<= 0; NOT DPO's implicit rewards)
  rewards/margins       chosen - rejected;  rewards/accuracies  share of pairs with chosen > rejected
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt


def read_log_history(path: Path) -> list[dict]:
    """metrics.jsonl (one Trainer log record per line) -> list of dicts."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _series(history: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in history if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _save(fig, path: Path | None):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def length_histogram(pair_tokens: list[int], max_length: int, path: Path | None = None):
    """Notebook 02: tokens per pair (prompt + longer answer) with the max_length cut-off."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(pair_tokens, bins=40, color="#4c72b0")
    ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length = {max_length}")
    dropped = sum(t > max_length for t in pair_tokens)
    ax.set(xlabel="tokens (prompt + longer answer)", ylabel="pairs",
           title=f"Pair lengths: {dropped} of {len(pair_tokens)} above max_length are dropped")
    ax.legend()
    return _save(fig, path)


def training_curves(history: list[dict], beta: float, path: Path | None = None):
    """Notebooks 04 and 05: the five ORPO views, train (lines) and eval (dots)."""
    fig, axes = plt.subplots(1, 5, figsize=(20, 3.4))
    panels = [
        ("Total ORPO loss", [("loss", "train"), ("eval_loss", "eval")]),
        ("NLL term vs odds-ratio term", [("nll_loss", "NLL (train)"), ("or_term", "-beta*log_odds_ratio (train)"),
                                         ("eval_nll_loss", "NLL (eval)"), ("eval_or_term", "OR term (eval)")]),
        ("Rewards = beta x mean log-prob", [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected"),
                                            ("eval_rewards/chosen", "chosen (eval)"),
                                            ("eval_rewards/rejected", "rejected (eval)")]),
        ("Reward margin (chosen - rejected)", [("rewards/margins", "train"), ("eval_rewards/margins", "eval")]),
        ("Reward accuracy", [("rewards/accuracies", "train"), ("eval_rewards/accuracies", "eval")]),
    ]
    records = []
    for record in history:  # derive the odds-ratio term the loss actually adds
        record = dict(record)
        for prefix in ("", "eval_"):
            if f"{prefix}log_odds_ratio" in record:
                record[f"{prefix}or_term"] = -beta * record[f"{prefix}log_odds_ratio"]
        records.append(record)
    for ax, (title, keys) in zip(axes, panels):
        for key, label in keys:
            steps, values = _series(records, key)
            if steps:
                style = dict(marker="o", linestyle="--") if key.startswith("eval_") else {}
                ax.plot(steps, values, label=label, **style)
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
    return _save(fig, path)


def margin_histogram(base_margins: list[float], tuned_margins: list[float], path: Path | None = None):
    """Notebook 05: per-pair reward margins of the base and the tuned model on held-out pairs."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = 40
    ax.hist(base_margins, bins=bins, alpha=0.6, label="base (adapter off)", color="#8c8c8c")
    ax.hist(tuned_margins, bins=bins, alpha=0.6, label="tuned (ORPO)", color="#55a868")
    ax.axvline(0, color="black", linewidth=1)
    ax.set(xlabel="margin = beta x (mean log-prob chosen - rejected)", ylabel="held-out pairs",
           title="Right of 0: the model prefers the chosen answer")
    ax.legend()
    return _save(fig, path)
