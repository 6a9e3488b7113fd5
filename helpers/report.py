"""The run's `report.md` (notebook 05): the numbers a reader needs, pointers to the figures."""

from __future__ import annotations

from .rundir import RunDir, read_json


def write_report(run: RunDir, cfg, results: dict) -> None:
    """Summarize data, training and evaluation of one run in Markdown."""
    data = read_json(run.root / "data_report.json") if (run.root / "data_report.json").exists() else {}
    train = read_json(run.train_summary) if run.train_summary.exists() else {}
    base, tuned = results["base"], results["tuned"]
    lines = [f"# ORPO + QLoRA run `{cfg.run_name}`", "",
             f"Profile `{cfg.profile}`, model `{cfg.model_id}`, data `{cfg.dataset_id}`, seed {cfg.seed}.",
             f"LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}; ORPO beta={cfg.beta}, lr={cfg.learning_rate}, "
             f"max_length={cfg.max_length}.", "", "## Data"]
    for split, n in data.get("splits", {}).items():
        bad = (data.get("bad_rows", {}).get(split) or {})
        long = data.get("too_long", {}).get(split)
        dropped = [f"{bad['dropped_bad_rows']} unusable rows {bad.get('reasons') or ''}".rstrip()] if bad else []
        if long:
            dropped.append(f"{long['dropped']} of {long['measured']} measured as longer than max_length "
                           f"({long['dropped_share']:.1%})")
        lines.append(f"- {split}: {n} pairs; {data.get('how_formed', {}).get(split, '')}"
                     + (f"; dropped {' and '.join(dropped)}" if dropped else "") + ".")
    if train:
        lines += ["", "## Training",
                  f"- {train.get('global_step')} steps in {train.get('train_seconds')} s "
                  f"(~{train.get('tokens_per_second_approx')} tokens/s), final train loss "
                  f"{train.get('train_loss', float('nan')):.4f}"
                  + (f", peak GPU memory {train['peak_gpu_memory_GiB']} GiB." if train.get("peak_gpu_memory_GiB")
                     else " (CPU).")]
    lines += ["", f"## Held-out evaluation ({results['n_pairs']} pairs, scored in {results['scoring_seconds']} s)", "",
              "| model | reward accuracy | mean margin | task success |", "|---|---|---|---|"]
    success = results.get("task_success") or {}
    for name, m in (("base (adapter off)", base), ("tuned (ORPO)", tuned)):
        key = name.split()[0]
        task = f"{success[key]:.1%}" if key in success else "n/a"
        lines.append(f"| {name} | {m['reward_accuracy']:.3f} | {m['mean_margin']:.4f} | {task} |")
    merges = results.get("merge_check") or {}  # notebook 05, section 8
    lines += ["", "## Merged models, against the evaluated 4-bit + adapter", ""] if merges else []
    for name, m in merges.items():
        task = "n/a" if m["task_success"] is None else f"{m['task_success']:.1%}"
        lines.append(f"- `merged-{name}/`: same preferred answer on {m['same_preference_share']:.1%} of pairs, "
                     f"largest mean log-prob gap {m['max_abs_logp_gap']:.3g}, reward accuracy "
                     f"{m['reward_accuracy']:.3f}, task success {task}.")
    lines += ["", "Figures: `figures/lengths.png`, `figures/training_curves.png`, `figures/margins.png`.", ""]
    run.report.write_text("\n".join(lines))
