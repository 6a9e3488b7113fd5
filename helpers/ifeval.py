"""IFEval with lm-evaluation-harness, base vs tuned (notebook 05, section 7, -p ifeval true): the glue around the
notebook's `simple_evaluate` call. Install: pip install -r requirements-ifeval.txt."""

from __future__ import annotations

METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
PAPER = {"prompt_level_strict_acc": 0.5287, "inst_level_loose_acc": 0.6619}  # ORPO paper: Mistral-ORPO-β


def check_ready() -> None:
    """One clear error before anything slow if lm-eval or nltk's punkt_tab is missing (else lm-eval downloads it)."""
    try:
        import immutabledict, langdetect, lm_eval, nltk  # noqa: E401, F401 - lm_eval[ifeval]
    except ImportError as err:
        raise ImportError(f"IFEval needs lm-evaluation-harness and its ifeval extras ({err.name!r} is missing). "
                          "Fix: pip install -r requirements-ifeval.txt") from None
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise LookupError(f"IFEval's checkers need nltk's 'punkt_tab' data, not found in {nltk.data.path}. Fix: "
                          "python -c \"import nltk; nltk.download('punkt_tab')\"; offline: unzip nltk_data's "
                          "tokenizers/punkt_tab.zip into <dir>/tokenizers/ and set NLTK_DATA=<dir>.") from None


def ifeval_scores(results: dict, task: str = "ifeval") -> dict:
    """The four metrics and the number of prompts scored, from `lm_eval.simple_evaluate`'s results."""
    return {**{m: float(results["results"][task][f"{m},none"]) for m in METRICS},
            "n_prompts": int(results["n-samples"][task]["effective"])}


def ifeval_table(scores: dict[str, dict]) -> str:
    """Base, tuned and the paper's Mistral-ORPO-β side by side, in %; '—' where the paper has no number."""
    rows = {**scores, "paper ORPO-β": PAPER}
    lines = [f"{'':<24}" + "".join(f"{name:>14}" for name in rows)]
    return "\n".join(lines + [f"{m:<24}" + "".join(f"{r[m]:>14.2%}" if m in r else f"{'—':>14}"
                                                   for r in rows.values()) for m in METRICS])
