"""Notebook 04's `h100` path next to what a learner would pick instead, on the same GPU, model shape and pairs.

    bash benchmarks/peer_benchmark.sh part1     # on the GPU box: Unsloth (2 ways), TRL's best stock settings, ours
    bash benchmarks/peer_benchmark.sh part2     # ours without expandable segments, the seed recipe, scoring x3
    python benchmarks/peer_benchmark.py combine A.json B.json ... --out peer_benchmark.json   # anywhere; a combined
                    # file given as input adds its rows, and its own ours / fastest-peer ratio to the per-run list

Every row runs in its own process (`row NAME`), on the model `build` saved: Mistral-7B-v0.1's exact config with
random weights (speed and memory don't depend on the weights), loaded in 4-bit nf4 by each contender's own loader,
and the same synthetic UltraFeedback-like pairs (orpo_speed.synthetic_pairs, seed 0: 924.7 tokens per pair on
average, at most 1,024). Each row trains --warmup untimed + --steps timed optimizer steps of 16 pairs, LoRA r 16 /
alpha 32 on all linear layers, dropout 0, max_length 1,024, and reports tokens/s counted the same way everywhere
(orpo_speed.instrument: real tokens of prompt + chosen + rejected, the prompt counted once per answer) and torch's
peak allocated and reserved memory.

Rows:
  ours          notebook 04's own LoRA, ORPOConfig and trainer cells with the h100 profile (orpo_speed's `fast`);
                expandable segments on, as every notebook sets them
  ours_noexp    the same with PyTorch's default allocator (Unsloth turns expandable segments on itself)
  seed          the seed recipe (orpo_speed.SEED: TRL, 2 x 4, full checkpointing, paged 8-bit AdamW); with
                --scoring-reps, then notebook 05's scorer vs Trainer.evaluate, alternating, N times
  trl_best      TRL's ORPOTrainer as its documentation would have it tuned: bf16, SDPA attention (FlashAttention-2
                is not installed on the box), use_liger_kernel, length-grouped batches, fused AdamW, full gradient
                checkpointing, and the largest micro-batch (16, 8, 4, 2) whose step stays within --budget-gib
  unsloth       Unsloth's FastLanguageModel (load_in_4bit) + its get_peft_model (use_gradient_checkpointing=
                "unsloth") + TRL's ORPOTrainer as Unsloth patches it, in the TRL and transformers versions Unsloth
                supports (its own environment: benchmarks/peer_wheels.sh); micro-batch probed as for trl_best
  unsloth_fused the same with UNSLOTH_FUSED_PREFERENCE_LOSS=1 (Unsloth's opt-in fused ORPO/DPO scoring)

`--tiny` runs the same plumbing on a tiny model on a CPU (tests/test_peer_benchmark.py); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import orpo_speed as S  # noqa: E402  (the pairs, tokenizer, model, token counting and timing of every GPU benchmark)

PAIRS_PER_STEP = 16
MICRO_BATCHES = (16, 8, 4, 2)
ROWS = ("ours", "ours_noexp", "seed", "trl_best", "unsloth", "unsloth_fused")
PEERS = ("trl_best", "unsloth", "unsloth_fused")


def log(msg: str) -> None:
    S.log(msg)


def sizes(tiny: bool) -> dict:
    return dict(config=S.TINY if tiny else S.MISTRAL_7B, train_pairs=64 if tiny else 1600)


def pairs(tiny: bool, with_token_columns: bool = False):
    import datasets

    datasets.disable_progress_bars()
    z = sizes(tiny)
    rows = S.synthetic_pairs(z["train_pairs"], z["config"]["vocab_size"], seed=0)
    full = datasets.Dataset.from_list(rows)
    train = full.select_columns(["prompt", "chosen", "rejected"])
    longest = full.sort("pair_tokens", reverse=True).select(range(PAIRS_PER_STEP)).select_columns(
        ["prompt", "chosen", "rejected"])
    return (train, longest, full) if with_token_columns else (train, longest)


def build(work: Path, tiny: bool) -> dict:
    import torch

    z = sizes(tiny)
    tok = S.build_tokenizer(z["config"]["vocab_size"])
    cuda = torch.cuda.is_available()
    secs = S.build_and_save_model(work / "model", z["config"], "cuda" if cuda else "cpu",
                                  torch.bfloat16 if cuda else torch.float32, tok)
    log(f"built + saved the random model in {secs:.1f} s at {work / 'model'}")
    return {"build_seconds": round(secs, 1)}


def training_fields(work: Path, name: str, steps: int, mb: int, cuda: bool) -> dict:
    """The ORPOConfig fields every peer row shares (what differs is named in the row)."""
    return dict(output_dir=str(work / name), per_device_train_batch_size=mb,
                gradient_accumulation_steps=max(1, PAIRS_PER_STEP // mb), max_length=S.MAX_LENGTH, beta=0.1,
                learning_rate=8e-6, lr_scheduler_type="linear", warmup_steps=1, max_steps=steps,
                logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True,
                remove_unused_columns=False, dataloader_num_workers=0, seed=0, bf16=cuda, use_cpu=not cuda,
                gradient_checkpointing=True)


NO_LENGTH_GROUPING = "Can only automatically infer lengths"  # transformers' LengthGroupedSampler wants input_ids


def with_length_grouping(fields: dict, config_cls, grouping: bool = True) -> dict:
    """Length-grouped batches where the trainer can make them. Stock ORPOTrainer can't: transformers' sampler
    infers lengths from an `input_ids` column, and ORPO rows have chosen_/rejected_input_ids (ValueError
    NO_LENGTH_GROUPING at the first batch); then the row runs with random batches and says so."""
    import dataclasses

    if not grouping:
        return fields
    names = {f.name for f in dataclasses.fields(config_cls)}
    if "train_sampling_strategy" in names:  # transformers 5's name
        return dict(fields, train_sampling_strategy="group_by_length")
    return dict(fields, group_by_length=True)


def largest_micro_batch(make, longest, budget_gib: float, tiny: bool) -> tuple[int, list]:
    """The largest micro-batch in MICRO_BATCHES whose optimizer step over the 16 longest pairs stays within
    `budget_gib` allocated (no OOM). `make(mb, steps, dataset)` builds an instrumented trainer."""
    import torch

    tried = []
    for mb in MICRO_BATCHES:
        S.free()
        S.reset_peak()
        try:
            tr = make(mb, 1, longest)
            try:
                tr.train()
            except ValueError as e:
                if NO_LENGTH_GROUPING not in str(e) or not make.grouping:
                    raise
                make.grouping, make.grouping_error = False, f"ValueError: {e}"
                log(f"length grouping refused ({e}); random batches from here on")
                tr = make(mb, 1, longest)
                tr.train()
            peak = S.peak_gib()["peak_allocated_gib"]
            fits = tiny or (peak is not None and peak <= budget_gib)
            tried.append({"micro_batch": mb, "peak_allocated_gib": peak, "fits": fits})
        except torch.OutOfMemoryError as e:
            tried.append({"micro_batch": mb, "error": f"OOM: {str(e)[:120]}", "fits": False})
            fits = False
        tr = None
        S.free()
        log(f"probe micro-batch {mb}: {tried[-1]}")
        if fits:
            return mb, tried
    raise RuntimeError(f"no micro-batch in {MICRO_BATCHES} fits {budget_gib} GiB: {tried}")


def versions() -> dict:
    import importlib.metadata as md

    out = S.versions()
    for name in ("unsloth", "unsloth_zoo", "xformers", "torchao"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def row_trl_best(work: Path, a) -> dict:
    import torch
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    from peft import LoraConfig

    cuda = torch.cuda.is_available()
    train, longest = pairs(a.tiny)
    tok = S.build_tokenizer(sizes(a.tiny)["config"]["vocab_size"])
    base = S.load_4bit(work / "model", torch.bfloat16 if cuda else torch.float32, "cuda" if cuda else "cpu")
    state = {"model": base, "peft": LoraConfig(lora_dropout=0.0, **S.LORA)}

    def make(mb, steps, dataset):
        fields = with_length_grouping(training_fields(work, "trl_best", steps, mb, cuda), ORPOConfig, make.grouping)
        fields.update(optim="adamw_torch_fused" if cuda else "adamw_torch", use_liger_kernel=cuda,
                      gradient_checkpointing_kwargs={"use_reentrant": False})
        tr = ORPOTrainer(model=state["model"], args=ORPOConfig(**fields), train_dataset=dataset,
                         processing_class=tok, peft_config=state["peft"])
        state["model"], state["peft"] = tr.model, None  # later trainers reuse the PEFT model (one LoRA)
        return S.instrument(tr)

    make.grouping, make.grouping_error = True, None
    mb, probes = largest_micro_batch(make, longest, a.budget_gib, a.tiny)
    res = S.run_training("trl_best", make(mb, a.warmup + a.steps, train), a.warmup)
    return {**res, "micro_batch": mb, "probes": probes, "settings": {
        "trainer": "trl.experimental.orpo.ORPOTrainer", "attn_implementation": "sdpa", "bf16": cuda,
        "use_liger_kernel": cuda, "liger_kernel_config": "TRL/transformers default",
        "sampling": "group_by_length" if make.grouping else f"random (group_by_length refused: {make.grouping_error})", "optim": "adamw_torch_fused", "gradient_checkpointing": "all layers",
        "micro_batch": mb, "gradient_accumulation_steps": PAIRS_PER_STEP // mb}}


def row_unsloth(work: Path, a, fused: bool) -> dict:
    if fused:
        os.environ["UNSLOTH_FUSED_PREFERENCE_LOSS"] = "1"
    import unsloth  # noqa: F401  (first: it patches transformers and TRL's trainers)
    import torch
    from unsloth import FastLanguageModel
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tok = FastLanguageModel.from_pretrained(str(work / "model"), max_seq_length=S.MAX_LENGTH,
                                                   dtype=torch.bfloat16, load_in_4bit=True, local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=S.LORA["r"], lora_alpha=S.LORA["lora_alpha"], lora_dropout=0,
                                             bias="none", target_modules=S.LORA["target_modules"],
                                             use_gradient_checkpointing="unsloth", random_state=0,
                                             max_seq_length=S.MAX_LENGTH)
    train, longest = pairs(a.tiny)

    def make(mb, steps, dataset):
        fields = with_length_grouping(training_fields(work, "unsloth", steps, mb, True), ORPOConfig, make.grouping)
        fields.update(optim="adamw_8bit")  # as Unsloth's ORPO notebook sets it
        return S.instrument(ORPOTrainer(model=model, args=ORPOConfig(**fields), train_dataset=dataset,
                                        processing_class=tok))

    make.grouping, make.grouping_error = True, None
    mb, probes = largest_micro_batch(make, longest, a.budget_gib, a.tiny)
    res = S.run_training("unsloth_fused" if fused else "unsloth", make(mb, a.warmup + a.steps, train), a.warmup)
    return {**res, "micro_batch": mb, "probes": probes, "settings": {
        "loader": "unsloth.FastLanguageModel.from_pretrained(load_in_4bit=True, dtype=bfloat16)",
        "lora": "FastLanguageModel.get_peft_model(r=16, alpha=32, all linear, dropout 0, bias none, "
                "use_gradient_checkpointing='unsloth')",
        "trainer": "trl.experimental.orpo.ORPOTrainer as patched by `import unsloth`",
        "UNSLOTH_FUSED_PREFERENCE_LOSS": "1" if fused else "unset",
        "sampling": "group_by_length" if make.grouping else f"random (group_by_length refused: {make.grouping_error})",
        "optim": "adamw_8bit", "micro_batch": mb, "gradient_accumulation_steps": PAIRS_PER_STEP // mb,
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}}


def row_ours(work: Path, a, name: str) -> dict:
    import torch
    from helpers.profiles import resolve_config

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    cfg = resolve_config("h100" if cuda else "tiny", S.benchmark_overrides(a.warmup + a.steps))
    if not cuda:  # the tiny rehearsal: notebook 04's cells with the h100 profile's batch shape
        cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps = PAIRS_PER_STEP, 1
    _, _, full = pairs(a.tiny, with_token_columns=True)  # notebook 04's cells read 02's token-count columns
    import datasets
    data = datasets.DatasetDict(train=full, validation=full.select(range(8)))
    tok = S.build_tokenizer(sizes(a.tiny)["config"]["vocab_size"])
    model = S.load_4bit(work / "model", torch.bfloat16 if cuda else torch.float32, device)
    ns = S.notebook_namespace(cfg, device, work / name, model, tok, data)
    S.run_notebook_cells(ns)
    tr = S.instrument(ns["trainer"])
    res = S.run_training(name, tr, a.warmup)
    return {**res, "settings": {"source": "notebooks/04_orpo_training.ipynb's LoRA, ORPOConfig and trainer cells",
                                "profile": cfg.profile, "trainer": type(tr).__name__,
                                "micro_batch": cfg.per_device_train_batch_size,
                                "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                                "checkpoint_layers": cfg.checkpoint_layers, "share_prompt": cfg.share_prompt,
                                "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}}


def row_seed(work: Path, a) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    z = sizes(a.tiny)
    train, _ = pairs(a.tiny)
    tok = S.build_tokenizer(z["config"]["vocab_size"])
    model = S.load_4bit(work / "model", torch.bfloat16 if cuda else torch.float32, device)
    import datasets
    eval_rows = datasets.Dataset.from_list(S.synthetic_pairs(a.eval_pairs, z["config"]["vocab_size"],
                                                              seed=S.EVAL_SEED)).select_columns(
        ["prompt", "chosen", "rejected"])
    tr = S.make_trainer(S.SEED, model, train, tok, work / "seed", a.warmup + a.steps, "bf16" if cuda else "no",
                        not cuda, eval_data=eval_rows.select(range(a.evaluate_subset)))
    res = S.run_training("seed", tr, a.warmup)
    res["settings"] = dict(S.SEED, pairs_per_step=S.SEED["per_device_train_batch_size"]
                           * S.SEED["gradient_accumulation_steps"])
    if a.scoring_reps:
        res["scoring"] = scoring_reps(tr, eval_rows, tok, work, device, a)
    return res


def scoring_reps(trainer, eval_rows, tok, work: Path, device: str, a) -> dict:
    """Notebook 05's scorer (shared prompts, as the h100 profile scores) vs Trainer.evaluate at eval batch 8 on the
    same pairs, `a.scoring_reps` times, alternating which goes first; evaluate runs on the first --evaluate-subset
    pairs and is extrapolated linearly to all (as orpo_speed does). Median ratio with min and max."""
    import functools

    from trl.data_utils import maybe_apply_chat_template

    from helpers.scoring import mean_answer_logps

    score = functools.partial(mean_answer_logps, fast=True)
    n, sub = len(eval_rows), a.evaluate_subset
    tokenized = eval_rows.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tok}).map(
        trainer.tokenize_row)
    trainer.model.save_pretrained(work / "seed_adapter")
    scorer_model = S.load_like_notebook_05(work / "model", work / "seed_adapter", device)
    prompts, chosen, rejected = eval_rows["prompt"], eval_rows["chosen"], eval_rows["rejected"]
    both = lambda k: score(scorer_model, tok, prompts[:k] + prompts[:k], chosen[:k] + rejected[:k],  # noqa: E731
                           share_prompt=True)
    # untimed warm-ups: evaluate over the very pairs it is timed on (the committed runs warmed it on 8 other pairs
    # only, and its first timed pass was 26-34% slower than the next ones), the scorer on 16 pairs
    S.time_evaluate(trainer, tokenized.select(range(sub)), 8)
    both(16)

    def time_scorer():
        S.sync()
        t0 = time.perf_counter()
        both(n)
        S.sync()
        return time.perf_counter() - t0

    reps = []
    for i in range(a.scoring_reps):
        order = ("evaluate", "scorer") if i % 2 == 0 else ("scorer", "evaluate")
        rep = {"order": list(order)}
        for what in order:
            if what == "evaluate":
                t, _ = S.time_evaluate(trainer, tokenized.select(range(sub)), 8)
                rep["evaluate_seconds_measured"] = round(t, 2)
                rep["evaluate_seconds_extrapolated"] = round(t * n / sub, 1)
            else:
                rep["scorer_seconds"] = round(time_scorer(), 2)
        rep["ratio"] = round(rep["evaluate_seconds_extrapolated"] / rep["scorer_seconds"], 2)
        reps.append(rep)
        log(f"scoring rep {i + 1}: {rep}")
    ratios = [r["ratio"] for r in reps]
    return {"pairs": n, "evaluate_pairs_run": sub, "evaluate_batch_size": 8,
            "scorer": "helpers.scoring.mean_answer_logps(fast=True, share_prompt=True), model loaded as notebook 05",
            "reps": reps, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios)}


def run_row(name: str, a) -> dict:
    import torch

    work = Path(a.work)
    out = {"row": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tiny": a.tiny,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "warmup": a.warmup, "steps": a.steps, "budget_gib": a.budget_gib, "pairs_per_step": PAIRS_PER_STEP}
    t0 = time.perf_counter()
    try:
        if name in ("ours", "ours_noexp"):
            out.update(row_ours(work, a, name))
        elif name == "seed":
            out.update(row_seed(work, a))
            out["pairs_per_step"] = out["settings"]["pairs_per_step"]
        elif name == "trl_best":
            out.update(row_trl_best(work, a))
        else:
            out.update(row_unsloth(work, a, fused=name == "unsloth_fused"))
    except Exception as e:  # noqa: BLE001 - the row's failure is a result: said with its error, others go on
        out["error"] = f"{type(e).__name__}: {e}"[:2000]
        out["traceback"] = traceback.format_exc()[-4000:]
        log(f"{name} FAILED: {out['error']}")
    out["versions"] = versions()  # after the row: Unsloth's import may change what is loaded
    out["row_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def combine(paths: list[str]) -> dict:
    runs: dict[str, list] = {}
    per_run = []  # ours / the fastest peer as measured within one call (one machine): the spread between runs
    scorings = []  # the seed row's scoring reps, one entry per run that scored
    for p in paths:  # a row measured in several calls (ours: once per part) counts with its median tokens/s
        r = json.loads(Path(p).read_text())
        s = r.get("summary") or {}
        per_run += s.get("ours_over_fastest_peer_per_run") or (
            [s["ours_over_fastest_peer"]] if "ours_over_fastest_peer" in s else [])
        scorings += s.get("scoring_runs") or []
        for row in r["rows"].values() if "rows" in r else [r]:  # a combined file (part 1, committed) adds its rows
            runs.setdefault(row["row"], []).append(row)
            if row["row"] == "seed" and row.get("scoring") and "scoring_runs" not in s:
                scorings.append(row["scoring"])
    rows = {}
    for name, found in runs.items():
        good = sorted((r for r in found if r.get("tokens_per_s")), key=lambda r: r["tokens_per_s"])
        rows[name] = dict(good[(len(good) - 1) // 2]) if good else found[0]
        if len(found) > 1:
            rows[name]["repeats_tokens_per_s"] = [r.get("tokens_per_s") for r in found]
            if good:
                rows[name]["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in good), 1)
    ok = {k: r for k, r in rows.items() if r.get("tokens_per_s")}
    summary = {}
    peers = {k: r for k, r in ok.items() if k in PEERS}
    if "ours" in ok and peers:
        fastest = max(peers, key=lambda k: peers[k]["tokens_per_s"])
        summary.update(fastest_peer=fastest, fastest_peer_tokens_per_s=peers[fastest]["tokens_per_s"],
                       ours_over_fastest_peer=round(ok["ours"]["tokens_per_s"] / peers[fastest]["tokens_per_s"], 2),
                       goal="ours >= 1.5x the fastest peer at <= 40 GiB allocated",
                       ours_peak_allocated_gib=ok["ours"].get("peak_allocated_gib"))
        summary["goal_met"] = (summary["ours_over_fastest_peer"] >= 1.5
                               and (ok["ours"].get("peak_allocated_gib") or 0) <= 40)
        summary["ours_over_each"] = {k: round(ok["ours"]["tokens_per_s"] / r["tokens_per_s"], 2)
                                     for k, r in ok.items() if k != "ours"}
        if per_run:
            summary["ours_over_fastest_peer_per_run"] = per_run
    if scorings:  # every run's reps count together; each run's own median is kept, and the reps for a later combine
        ratios = [rep["ratio"] for sc in scorings for rep in sc["reps"]]
        summary["scoring_ratio_median"] = statistics.median(ratios)
        summary["scoring_ratio_spread"] = [min(ratios), max(ratios)]
        summary["scoring_ratio_median_per_run"] = [sc["ratio_median"] for sc in scorings]
        summary["scoring_runs"] = scorings
    summary["failed_rows"] = {k: r["error"] for k, r in rows.items() if r.get("error")}
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows, "summary": summary}


def print_table(result: dict) -> None:
    head = ("row", "tokens/s", "s/step", "pairs/step", "micro-batch", "peak alloc GiB", "peak reserved GiB")
    lines = [head]
    for name, r in result["rows"].items():
        if r.get("tokens_per_s"):
            mb = r.get("micro_batch") or (r.get("settings") or {}).get("micro_batch") or (
                r.get("settings") or {}).get("per_device_train_batch_size")
            lines.append((name, f"{r['tokens_per_s']:.0f}", f"{r['s_per_step']:.2f}", str(r.get("pairs_per_step")),
                          str(mb), str(r.get("peak_allocated_gib")), str(r.get("peak_reserved_gib"))))
        else:
            lines.append((name, "FAILED", (r.get("error") or "")[:100], "", "", "", ""))
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in lines))
    print(json.dumps({k: v for k, v in result["summary"].items() if k != "scoring_runs"}, indent=1))  # reps: logged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="save the random Mistral-7B-shaped model and its tokenizer into --work")
    r = sub.add_parser("row", help="run one row in this process and write its JSON")
    r.add_argument("name", choices=ROWS)
    for p in (b, r):
        p.add_argument("--work", default="/tmp/peer_benchmark")
        p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: plumbing only")
    r.add_argument("--out", required=True)
    r.add_argument("--warmup", type=int, default=8)
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--budget-gib", type=float, default=40.0)
    r.add_argument("--scoring-reps", type=int, default=0, help="seed row: then N alternating scorer/evaluate reps")
    r.add_argument("--eval-pairs", type=int, default=1000)
    r.add_argument("--evaluate-subset", type=int, default=96)
    c = sub.add_parser("combine", help="merge row JSONs, compare with the fastest peer, print the table")
    c.add_argument("paths", nargs="+")
    c.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        Path(a.work).mkdir(parents=True, exist_ok=True)
        build(Path(a.work), a.tiny)
        return 0
    if a.cmd == "row":
        import torch
        if not torch.cuda.is_available() and not a.tiny:
            sys.exit("peer_benchmark.py row needs a CUDA GPU; --tiny rehearses the plumbing on a CPU")
        if a.tiny:
            a.warmup, a.steps, a.eval_pairs, a.evaluate_subset = 1, min(a.steps, 2), 24, 8
        out = run_row(a.name, a)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2))
        log(f"{a.name}: wrote {a.out}" + (f" (FAILED: {out['error'][:200]})" if out.get("error") else ""))
        return 1 if out.get("error") else 0
    result = combine(a.paths)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
