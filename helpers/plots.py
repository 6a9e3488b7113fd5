"""Figures for notebooks 02, 04 and 05 (saved as PNG given a path, returned to display) and describe_* sentences
that read the run's own numbers under each; the logged metrics are explained in docs/design-decisions.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

OR_TERM_LABEL = "β·(−mean log σ(log-odds))"  # the odds-ratio term the ORPO loss adds (positive)
TITLE_PT, LABEL_PT, TICK_PT, LEGEND_PT = 10, 10, 9, 9
BLUE, ORANGE, GREEN, RED, GREY = "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8c8c8c"
TRAIN_LINE, EVAL_DOTS = dict(linewidth=1.6), dict(marker="o", markersize=4, linestyle="--", linewidth=1.2)
_FULL = 1 - 1e-6  # an accuracy logged as 0.99999994 is 1.0 in float32


def read_log_history(path: Path) -> list[dict]:
    """metrics.jsonl (one Trainer log record per line) -> list of dicts."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- small helpers
def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _finite_array(values) -> np.ndarray:
    """Any iterable (list, numpy array, a `datasets` Column) -> float array without NaN / inf."""
    return np.asarray([float(v) for v in values if _finite(v)], dtype=float)


def _step(step) -> str:
    return str(int(step)) if float(step).is_integer() else f"{step:g}"


def _num(value: float) -> str:
    """A token count to one decimal at most: 87, 87.5."""
    value = round(float(value), 1)
    return str(int(value)) if value.is_integer() else f"{value:.1f}"


def _pct(share: float, digits: int = 1) -> str:
    """0.1234 -> '12.3%', 1.0 -> '100%'; never rounds a share below 1 up to 100% or above 0 down to 0%."""
    text = f"{share * 100:.{digits}f}"
    if float(text) >= 100 and share < 1:
        return f">{100 - 10 ** -digits:.{digits}f}%"
    if float(text) == 0 and share > 0:
        return f"<{10 ** -digits:.{digits}f}%"
    if digits and text.endswith("." + "0" * digits):
        text = text[: -(digits + 1)]
    return text + "%"


def _with_or_term(history: list[dict], beta: float) -> list[dict]:
    """Copies of the records with `or_term` / `eval_or_term` = beta x (-log_odds_ratio), the term the loss adds."""
    records = [dict(record) for record in history]
    for record in records:
        for prefix in ("", "eval_"):
            if _finite(record.get(f"{prefix}log_odds_ratio")):
                record[f"{prefix}or_term"] = -beta * float(record[f"{prefix}log_odds_ratio"])
    return records


def _records_with(records: list[dict], key: str) -> list[dict]:
    """The records with a step and a finite `key`: "loss" picks train records, "eval_loss" eval records."""
    return [r for r in records if "step" in r and _finite(r.get(key))]


def _first_full_accuracy(train: list[dict]):
    """Step at which the train reward accuracy first reached 1.0, or None."""
    return next((r["step"] for r in train if _finite(r.get("rewards/accuracies"))
                 and float(r["rewards/accuracies"]) >= _FULL), None)


def _style(ax, title: str, xlabel: str, ylabel: str, legend: bool = True, legend_loc: str = "best"):
    ax.set_title(title, fontsize=TITLE_PT)
    ax.set_xlabel(xlabel, fontsize=LABEL_PT)
    ax.set_ylabel(ylabel, fontsize=LABEL_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=LEGEND_PT, loc=legend_loc)


def _save(fig, path: Path | None):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _edges_around(values: np.ndarray, boundary: float, bins: int) -> np.ndarray:
    """About `bins` equal-width bins covering `values` and `boundary`, with `boundary` itself a bin edge."""
    low, high = min(values.min(), boundary), max(values.max(), boundary)
    width = (high - low) / bins or 1.0
    first, last = math.floor((low - boundary) / width), math.ceil((high - boundary) / width)
    return boundary + width * np.arange(first, max(last, first + 1) + 1)


# ---------------------------------------------------------------- notebook 02
def length_histogram(pair_tokens, max_length: int, path: Path | None = None, *, bins: int = 40,
                     figsize: tuple[float, float] = (8.0, 3.6)):
    """Notebook 02: tokens per pair (prompt + longer answer); the pairs over max_length (dropped) in red."""
    tokens = _finite_array(pair_tokens)
    fig, ax = plt.subplots(figsize=figsize)
    kept, over = tokens[tokens <= max_length], tokens[tokens > max_length]
    if tokens.size:
        edges = _edges_around(tokens, max_length + 0.5, bins)  # shared bins, one edge between kept and dropped
        ax.hist(kept, bins=edges, color=BLUE, label=f"kept ({len(kept)})")
        if over.size:
            ax.hist(over, bins=edges, color=RED, label=f"over max_length, dropped ({len(over)})")
        median, p95 = np.median(tokens), np.percentile(tokens, 95)
        ax.axvline(median, color="black", linestyle=":", label=f"median = {_num(median)}")
        ax.axvline(p95, color="black", linestyle="-.", label=f"95th percentile = {_num(p95)}")
    else:
        ax.text(0.5, 0.5, "no pairs", transform=ax.transAxes, ha="center", fontsize=LABEL_PT)
    ax.axvline(max_length, color=RED, linestyle="--", label=f"max_length = {max_length}")
    share = f" ({_pct(len(over) / len(tokens))})" if tokens.size else ""
    ax.margins(y=0.3)  # headroom above the bars for the legend (bars stay on 0)
    _style(ax, f"Tokens per pair: {len(over):,} of {len(tokens):,} pairs{share} are over max_length and get dropped",
           "tokens (prompt + longer answer)", "pairs")
    return _save(fig, path)


def describe_lengths(pair_tokens, max_length: int) -> str:
    """Notebook 02, after length_histogram: median, 95th percentile and how many pairs are over max_length."""
    tokens = _finite_array(pair_tokens)
    if not tokens.size:
        return "There are no pairs to measure."
    n, over = len(tokens), int((tokens > max_length).sum())
    median, p95, longest = np.median(tokens), np.percentile(tokens, 95), tokens.max()
    text = (f"A pair (prompt + longer answer) is {_num(median)} tokens long at the median and {_num(p95)} at the "
            f"95th percentile (longest: {_num(longest)}). ")
    if over:
        text += f"{over:,} of {n:,} pairs ({_pct(over / n)}) are over max_length = {max_length} tokens and get dropped."
    else:
        text += f"None of the {n:,} pairs is over max_length = {max_length} tokens, so none is dropped."
    return text


# ---------------------------------------------------------------- notebooks 04 and 05
def _plot_keys(ax, records: list[dict], keys: list[tuple[str, str, str, str]]) -> list[float]:
    """Per (key, train label, eval label, colour): the train line and the `eval_` + key dots; returns the values."""
    plotted = []
    for key, train_label, eval_label, color in keys:
        for prefix, label, style in (("", train_label, TRAIN_LINE), ("eval_", eval_label, EVAL_DOTS)):
            points = [(r["step"], float(r[prefix + key])) for r in _records_with(records, prefix + key)]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=color, label=label, **style)
                plotted += values
    if not plotted:
        ax.text(0.5, 0.5, "not in this log history", transform=ax.transAxes, ha="center", va="center",
                fontsize=LABEL_PT, color=GREY)
    return plotted


def training_curves(history: list[dict], beta: float, path: Path | None = None, *,
                    figsize: tuple[float, float] = (10.5, 6.6)):
    """Notebooks 04 and 05: six ORPO views in a 2x3 grid, train (lines) and eval (dots). Top: total loss, NLL term,
    odds-ratio term (~100x smaller: its own log axis). Bottom: rewards, reward margin, reward accuracy."""
    records = _with_or_term(history, beta)
    train = _records_with(records, "loss")
    fig, axes = plt.subplots(2, 3, figsize=figsize)
    ax_loss, ax_nll, ax_or, ax_rewards, ax_margin, ax_acc = axes.flat

    _plot_keys(ax_loss, records, [("loss", "train", "eval", BLUE)])
    _style(ax_loss, "Total ORPO loss\n= NLL term + odds-ratio term", "step", "loss")
    _plot_keys(ax_nll, records, [("nll_loss", "train", "eval", BLUE)])
    _style(ax_nll, "NLL term: cross-entropy over\nprompt + chosen tokens (SFT part)", "step", "NLL")
    or_values = _plot_keys(ax_or, records, [("or_term", "train", "eval", ORANGE)])
    log_scale = bool(or_values) and min(or_values) > 0
    if log_scale:
        ax_or.set_yscale("log")
    _style(ax_or, f"Odds-ratio term ({'log' if log_scale else 'linear'} scale):\n"
                  "small = chosen already far likelier", "step", OR_TERM_LABEL)
    _plot_keys(ax_rewards, records, [("rewards/chosen", "chosen", "chosen (eval)", GREEN),
                                        ("rewards/rejected", "rejected", "rejected (eval)", RED)])
    _style(ax_rewards, "Rewards = β × mean token log-prob\n(nearer 0 = more likely)", "step", "reward")
    _plot_keys(ax_margin, records, [("rewards/margins", "train", "eval", BLUE)])
    ax_margin.axhline(0, color="black", linewidth=0.8)
    _style(ax_margin, "Reward margin = chosen − rejected\n(> 0: prefers the chosen answer)", "step", "margin")
    _plot_keys(ax_acc, records, [("rewards/accuracies", "train", "eval", BLUE)])
    full_at = _first_full_accuracy(train)
    if full_at is not None:
        ax_acc.axvline(full_at, color=GREY, linestyle=":", label=f"first 100%: step {_step(full_at)}")
    ax_acc.set_ylim(-0.04, 1.04)
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    _style(ax_acc, "Reward accuracy: share of pairs\nwith chosen reward > rejected", "step", "accuracy",
           legend_loc="lower right")
    return _save(fig, path)


def describe_training(history: list[dict], beta: float, *, overfit_tolerance: float = 0.01) -> str:
    """Notebooks 04 and 05, after training_curves: what this run's loss, accuracy and eval numbers say. Eval loss
    has risen when its last value is more than `overfit_tolerance` (relative) above its lowest."""
    records = _with_or_term(history, beta)
    train, evals = _records_with(records, "loss"), _records_with(records, "eval_loss")
    sentences = []
    if not train:
        sentences.append("This log history has no train-loss records.")
    else:
        first, last = train[0], train[-1]
        if len(train) == 1:
            sentences.append(f"There is one train-loss record: {last['loss']:.3f} at step {_step(last['step'])}.")
        else:
            sentences.append(f"Train loss went from {first['loss']:.3f} at step {_step(first['step'])} to "
                             f"{last['loss']:.3f} at step {_step(last['step'])}.")
        sentences += _accuracy_sentences(train)
        r = next((rec for rec in reversed(train) if _finite(rec.get("nll_loss")) and float(rec["loss"]) > 0), None)
        if r is not None:
            share = float(r["nll_loss"]) / float(r["loss"])
            text = (f"At step {_step(r['step'])} the NLL term ({float(r['nll_loss']):.3f}) is "
                    f"{_pct(share, 2 if share > 0.99 else 1)} of the train loss ({float(r['loss']):.3f})")
            if "or_term" in r:
                text += f"; the odds-ratio term is {r['or_term']:.2g}"
            sentences.append(text + ".")
    sentences += _eval_sentences(train, evals, overfit_tolerance)
    return " ".join(sentences)


def _accuracy_sentences(train: list[dict]) -> list[str]:
    accuracy = [r for r in train if _finite(r.get("rewards/accuracies"))]
    if not accuracy:
        return []
    since = _first_full_accuracy(train)
    if since is not None:
        text = f"Train reward accuracy first reached 100% at step {_step(since)}"
    else:
        best = max(accuracy, key=lambda r: float(r["rewards/accuracies"]))  # the first of equal maxima
        text = (f"Train reward accuracy never reached 100%; its highest was "
                f"{_pct(float(best['rewards/accuracies']))} at step {_step(best['step'])}")
        since = best["step"]
    after = [r for r in train if r["step"] >= since and "or_term" in r]
    if after:
        largest = max(r["or_term"] for r in after)
        text += (f"; from then on the odds-ratio term {OR_TERM_LABEL} is at most {largest:.2g} and ends at "
                 f"{after[-1]['or_term']:.2g} (step {_step(after[-1]['step'])})")
    return [text + "."]


def _train_loss_at(train: list[dict], step) -> dict | None:
    """The last train record at or before `step` (Trainer logs the mean loss since the previous log)."""
    before = [r for r in train if r["step"] <= step]
    return before[-1] if before else None


def _eval_sentences(train: list[dict], evals: list[dict], tolerance: float) -> list[str]:
    if not evals:
        return ["There are no eval records, so this history cannot show whether eval loss rose (overfitting)."]
    last = evals[-1]
    text = f"Last eval (step {_step(last['step'])}): loss {float(last['eval_loss']):.3f}"
    if _finite(last.get("eval_rewards/accuracies")):
        text += f", reward accuracy {_pct(float(last['eval_rewards/accuracies']))}"
    sentences = [text + "."]
    if len(evals) == 1:
        return sentences + ["With one eval record there is no eval trend to set against the train loss."]
    best = min(evals, key=lambda r: float(r["eval_loss"]))
    low, end = float(best["eval_loss"]), float(last["eval_loss"])
    if best is last or end <= low:
        return sentences + [f"Eval loss is lowest at the last eval ({end:.3f} at step {_step(last['step'])}), so "
                            f"these numbers show no sign of overfitting."]
    if end <= low * (1 + tolerance):
        return sentences + [f"Eval loss ended within {_pct(tolerance, 0)} of its lowest value ({low:.3f} at step "
                            f"{_step(best['step'])}), so these numbers show no sign of overfitting."]
    rose = f"Eval loss rose from its lowest, {low:.3f} at step {_step(best['step'])}, to {end:.3f}"
    then, now = _train_loss_at(train, best["step"]), _train_loss_at(train, last["step"])
    if then is None or now is None or then is now:
        return sentences + [rose + "; there are no train-loss records to compare over those steps."]
    then_loss, now_loss = float(then["loss"]), float(now["loss"])
    if now_loss < then_loss:
        return sentences + [rose + f" while train loss fell from {then_loss:.3f} to {now_loss:.3f} (steps "
                            f"{_step(then['step'])} to {_step(now['step'])}): a sign of overfitting, the model "
                            f"fits the training pairs better and the validation pairs worse."]
    return sentences + [rose + f", but train loss did not fall over those steps ({then_loss:.3f} to "
                        f"{now_loss:.3f}), so this is not the usual overfitting pattern."]


# ---------------------------------------------------------------- notebook 05
def margin_histogram(base_margins, tuned_margins, path: Path | None = None, *, bins: int = 40,
                     figsize: tuple[float, float] = (8.0, 3.8)):
    """Notebook 05: per-pair reward margins of the base and the tuned model on held-out pairs, on shared bins."""
    base, tuned = _finite_array(base_margins), _finite_array(tuned_margins)
    fig, ax = plt.subplots(figsize=figsize)
    both = np.concatenate([base, tuned])
    edges = np.histogram_bin_edges(both, bins=bins) if both.size else np.linspace(-1, 1, bins + 1)
    for values, name, color in ((base, "base (adapter off)", GREY), (tuned, "tuned (ORPO)", GREEN)):
        if values.size:
            ax.hist(values, bins=edges, alpha=0.55, color=color,
                    label=f"{name}: mean {values.mean():+.3g}, {_pct((values > 0).mean())} > 0")
            ax.axvline(values.mean(), color=color, linestyle="--", linewidth=1.5)
    ax.axvline(0, color="black", linewidth=1)
    ax.margins(y=0.3)  # headroom above the bars for the legend (bars stay on 0)
    _style(ax, "Held-out pairs: right of 0 = the model prefers the chosen answer (dashed: means)",
           "margin = β × (mean log-prob chosen − mean log-prob rejected)", "held-out pairs")
    return _save(fig, path)


def describe_margins(base_margins, tuned_margins) -> str:
    """Notebook 05, after margin_histogram: mean margin and share of positive margins, base vs tuned."""
    base, tuned = _finite_array(base_margins), _finite_array(tuned_margins)
    if not base.size or not tuned.size:
        missing = " and ".join(n for n, v in (("base", base), ("tuned", tuned)) if not v.size)
        return f"There are no {missing} margins to compare."
    mean_b, mean_t = base.mean(), tuned.mean()
    pos_b, pos_t = int((base > 0).sum()), int((tuned > 0).sum())
    pairs = f"{len(base):,} held-out pairs" if len(base) == len(tuned) else \
        f"held-out pairs ({len(base):,} scored base, {len(tuned):,} tuned)"
    share_b, share_t = pos_b / len(base), pos_t / len(tuned)
    return (f"On {pairs} the mean margin {_change(mean_b, mean_t)} (base, adapter off -> tuned): "
            f"{mean_b:+.3g} -> {mean_t:+.3g}. The share of pairs with a positive margin (the model prefers the "
            f"chosen answer) {_change(share_b, share_t)}: {_pct(share_b)} ({pos_b:,} of {len(base):,}) -> "
            f"{_pct(share_t)} ({pos_t:,} of {len(tuned):,}).")


def _change(before: float, after: float) -> str:
    return "rose" if after > before else "fell" if after < before else "did not change"
