"""helpers.plots: readable figures (sizes, fonts, scales, shared bins) and describe_* sentences that read the numbers.

Fast, CPU only, no network: synthetic log histories shaped like TRL 1.16's ORPOTrainer records.
"""

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from helpers.plots import (  # noqa: E402
    OR_TERM_LABEL, describe_lengths, describe_margins, describe_training, length_histogram, margin_histogram,
    read_log_history, training_curves,
)

BETA = 0.1
EVAL_LOSS = {10: 0.80, 20: 0.70, 30: 0.72, 40: 0.78}  # lowest at step 20, then rises: an overfitting sign


def nll(step):
    return 0.9 - 0.45 * (step - 1) / 39  # 0.9 -> 0.45


def log_odds_ratio(step):
    return -0.7 * (0.002 / 0.7) ** ((step - 1) / 39)  # -0.7 -> -0.002


def accuracy(step):
    return min(1.0, 0.3 + 0.7 * (step - 1) / 11)  # first 1.0 at step 12


def synthetic_history(with_eval=True, reaches_full=True):
    history = []
    for step in range(1, 41):
        chosen, rejected = -0.09 + 0.08 * step / 40, -0.03 - 0.3 * step / 40
        history.append({
            "loss": nll(step) - BETA * log_odds_ratio(step), "grad_norm": 0.4, "learning_rate": 1e-3,
            "rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
            "rewards/accuracies": accuracy(step) if reaches_full else min(accuracy(step), 0.875),
            "logps/chosen": chosen / BETA, "logps/rejected": rejected / BETA, "nll_loss": nll(step),
            "log_odds_ratio": log_odds_ratio(step), "log_odds_chosen": -math.log(-math.expm1(log_odds_ratio(step))),
            "epoch": step / 40, "step": step})
        if with_eval and step in EVAL_LOSS:
            history.append({
                "eval_loss": EVAL_LOSS[step], "eval_runtime": 0.1, "eval_rewards/chosen": chosen,
                "eval_rewards/rejected": rejected, "eval_rewards/margins": chosen - rejected,
                "eval_rewards/accuracies": 0.95, "eval_nll_loss": EVAL_LOSS[step] - 0.01,
                "eval_log_odds_ratio": -0.1 / step, "eval_log_odds_chosen": 2.0, "epoch": step / 40, "step": step})
    history.append({"train_runtime": 12.0, "train_loss": 0.6, "total_flos": 0.0, "epoch": 1.0, "step": 40})
    return history


def train_loss(step):
    return nll(step) - BETA * log_odds_ratio(step)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def axes_by_ylabel(fig):
    return {ax.get_ylabel(): ax for ax in fig.axes}


def assert_readable(fig, max_width=11):
    assert fig.get_size_inches()[0] <= max_width
    fig.canvas.draw()  # creates the tick labels
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert sizes and min(sizes) >= 9, min(sizes)
    for ax in fig.axes:
        assert ax.get_title().strip()
        for line in ax.get_lines():
            assert np.all(np.isfinite(np.asarray(line.get_xdata(), float)))
            assert np.all(np.isfinite(np.asarray(line.get_ydata(), float)))


# ---------------------------------------------------------------- training curves


def test_training_curves_layout_fonts_and_finite_lines(tmp_path):
    fig = training_curves(synthetic_history(), BETA, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert plt.fignum_exists(fig.number)  # left open for the notebook to display
    assert len(fig.axes) == 6
    assert_readable(fig)
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)


def test_odds_ratio_term_is_visible_on_its_own_axis():
    fig = training_curves(synthetic_history(), BETA)
    ax = axes_by_ylabel(fig)[OR_TERM_LABEL]
    lines = {line.get_label(): line for line in ax.get_lines()}
    steps, values = (np.asarray(a, float) for a in (lines["train"].get_xdata(), lines["train"].get_ydata()))
    expected = [-BETA * log_odds_ratio(s) for s in range(1, 41)]
    np.testing.assert_allclose(values, expected)  # the term the loss adds, positive
    # no NLL-sized data shares this axis
    assert max(np.max(np.asarray(line.get_ydata(), float)) for line in lines.values()) < 0.2
    low, high = ax.get_ylim()
    assert low <= values.min() and high >= values.max()
    if ax.get_yscale() == "log":
        assert math.log10(high / low) <= math.log10(values.max() / values.min()) + 2
    else:
        assert high - low <= 100 * (values.max() - values.min())
    # visible means: the second half of training (0.004 -> 0.0002) still spans a fifth of the panel's height
    fig.canvas.draw()
    pixels = ax.transData.transform(np.column_stack([steps, values]))[:, 1]
    late = pixels[steps >= 20]
    assert (late.max() - late.min()) >= 0.2 * ax.bbox.height


def test_nll_has_its_own_axis_and_labels_are_correct():
    fig = training_curves(synthetic_history(), BETA)
    axes = axes_by_ylabel(fig)
    nll_line = next(line for line in axes["NLL"].get_lines() if line.get_label() == "train")
    np.testing.assert_allclose(nll_line.get_ydata(), [nll(s) for s in range(1, 41)])
    texts = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "log_odds_ratio" not in texts and "OR term" not in texts  # the old, misleading names
    eval_loss = next(line for line in axes["loss"].get_lines() if line.get_label() == "eval")
    assert list(eval_loss.get_xdata()) == list(EVAL_LOSS) and list(eval_loss.get_ydata()) == list(EVAL_LOSS.values())


def test_training_curves_reads_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_history()))
    history = read_log_history(path)
    assert history == synthetic_history()
    training_curves(history, BETA, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").exists()


def test_training_curves_without_eval_and_with_bad_values(tmp_path):
    history = synthetic_history(with_eval=False)
    history[3]["nll_loss"] = float("nan")
    history[5]["log_odds_ratio"] = 0.0  # log sigmoid underflows to 0 in float32 for huge log-odds
    fig = training_curves(history, BETA, tmp_path / "curves.png")
    assert_readable(fig)
    assert not any(line.get_label() == "eval" for ax in fig.axes for line in ax.get_lines())


# ---------------------------------------------------------------- describe_training


def test_describe_training_reads_the_numbers():
    text = describe_training(synthetic_history(), BETA)
    assert f"from {train_loss(1):.3f} at step 1 to {train_loss(40):.3f} at step 40" in text
    assert "first reached 100% at step 12" in text
    assert f"at most {-BETA * log_odds_ratio(12):.2g}" in text and f"ends at {-BETA * log_odds_ratio(40):.2g}" in text
    assert OR_TERM_LABEL in text
    assert "Last eval (step 40): loss 0.780, reward accuracy 95%" in text
    assert "rose from its lowest, 0.700 at step 20, to 0.780" in text
    assert f"train loss fell from {train_loss(20):.3f} to {train_loss(40):.3f}" in text and "overfitting" in text
    share = nll(40) / train_loss(40)
    assert f"{share:.2%}" in text  # > 99%: two decimals


def test_describe_training_without_eval_records():
    text = describe_training(synthetic_history(with_eval=False), BETA)
    assert "step 12" in text and "no eval records" in text
    assert "Last eval" not in text and "sign of overfitting" not in text


def test_describe_training_accuracy_never_full_and_eval_not_rising():
    history = synthetic_history(reaches_full=False)
    for record in history:
        if "eval_loss" in record:
            record["eval_loss"] = 1.0 - record["step"] / 100  # falls throughout
    text = describe_training(history, BETA)
    assert "never reached 100%" in text and "highest was 87.5% at step 11" in text
    assert "Eval loss is lowest at the last eval (0.600 at step 40)" in text
    assert "no sign of overfitting" in text and "rose" not in text


def test_describe_training_on_empty_history():
    assert "no train-loss records" in describe_training([], BETA)
    assert "no eval records" in describe_training([], BETA)


# ---------------------------------------------------------------- lengths


def test_length_histogram_and_description(tmp_path):
    tokens = list(range(201))  # median 100, 95th percentile 190, 10 pairs over 190
    fig = length_histogram(tokens, 190, tmp_path / "lengths.png")
    assert (tmp_path / "lengths.png").exists()
    assert_readable(fig)
    ax = fig.axes[0]
    edges = [np.array([p.get_x() for p in c]) for c in ax.containers]
    assert len(edges) == 2  # kept and dropped, on one grid with an edge at max_length + 0.5
    widths = {round(p.get_width(), 9) for c in ax.containers for p in c}
    assert len(widths) == 1
    assert np.isclose(((edges[1][0] - 190.5) / widths.pop()) % 1, 0, atol=1e-6)
    assert sum(p.get_height() for p in ax.containers[1]) == 10
    text = describe_lengths(tokens, 190)
    assert "100 tokens long at the median and 190 at the 95th percentile (longest: 200)" in text
    assert "10 of 201 pairs (5%) are over max_length = 190" in text


def test_describe_lengths_none_over():
    assert "None of the 3 pairs is over max_length = 64" in describe_lengths([10, 20, 30], 64)
    assert describe_lengths([], 64) == "There are no pairs to measure."


# ---------------------------------------------------------------- margins

BASE = [-0.1] * 7 + [0.05] * 3  # mean -0.055, 30% > 0
TUNED = [0.4] * 9 + [-0.02]  # mean +0.358, 90% > 0


def test_margin_histogram_uses_shared_bins(tmp_path):
    fig = margin_histogram(BASE, TUNED, tmp_path / "margins.png")
    assert (tmp_path / "margins.png").exists()
    assert_readable(fig)
    base_bars, tuned_bars = fig.axes[0].containers
    assert [p.get_x() for p in base_bars] == [p.get_x() for p in tuned_bars]
    assert [p.get_width() for p in base_bars] == [p.get_width() for p in tuned_bars]
    assert sum(p.get_height() for p in base_bars) == len(BASE) and sum(p.get_height() for p in tuned_bars) == 10


def test_describe_margins_reads_the_numbers():
    text = describe_margins(BASE, TUNED)
    assert "10 held-out pairs" in text and "mean margin rose" in text
    assert "-0.055 -> +0.358" in text
    assert "30% (3 of 10) -> 90% (9 of 10)" in text


def test_describe_margins_degenerate():
    assert "did not change" in describe_margins([0.1, -0.1], [0.1, -0.1])
    assert describe_margins([], [0.1]) == "There are no base margins to compare."
