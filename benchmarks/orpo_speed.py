"""ORPO + QLoRA speed at real scale: the seed recipe vs the project's fast path, on a Mistral-7B-shaped model.

    python benchmarks/orpo_speed.py --out benchmarks/results/h100.json        # GPU only, ~7-8 minutes on an H100

Speed and memory do not depend on the weights, so the model has Mistral-7B-v0.1's exact config with random weights
(built on the GPU in bf16, saved, reloaded in 4-bit nf4 through the same `from_pretrained` call as the real one), a
32,000-token word-level tokenizer built offline (with the series' chat template), and synthetic preference pairs
with UltraFeedback-like lengths in the explicit-prompt conversational format notebook 02 writes
(prompt = [user message], chosen/rejected = [assistant message], plus prompt/chosen/rejected_tokens columns).
In one run it measures:
  seed   TRL ORPOTrainer: batch 2 x grad-accum 4, full gradient checkpointing, paged_adamw_8bit, LoRA r16 (dropout 0.05)
  fast   notebook 04's OWN code cells, executed verbatim: the cells that build `peft_config = LoraConfig(`,
         `training_args = ORPOConfig(` and `trainer = TrainerClass(` are read from notebooks/04_orpo_training.ipynb
         and exec'd in order in one namespace that holds what the notebook's earlier cells would have made: `cfg`
         (helpers.profiles.resolve_config("h100", overrides)), `precision` (as notebook 01 writes it for an H100),
         `run` (a RunDir in a temp folder), `model` (the 4-bit model), `tokenizer`, `data`, `train_dataset`,
         `eval_dataset` (selected as notebook 04's data cell does). The only overrides are what a benchmark must set:
         max_steps, and eval/save/logging cadence pushed past the run's end (printed and saved in the JSON); the
         end-of-run evaluation and checkpoint the Trainer would add after the last step are skipped (untimed anyway).
  shared / unshared   the fast run's settings as built (batch, checkpointed layers, grouping, Liger) with prefix
         sharing (issue #12: each pair packed as one padding-free [prompt, chosen, rejected] segment, the prompt
         computed once; FlashAttention's varlen kernel, or a FlexAttention BlockMask) switched to the other side of
         what the profile says: `unshared` when notebook 04 shares prompts (the h100 profile does), else `shared`;
         built by make_trainer on the fast run's model
  t4     the t4 profile's settings (fp16, fp16 compute dtype), peak memory only (a T4 has 15 GiB)
  eval   held-out scoring of --eval-pairs pairs: notebook 05's helpers.scoring.mean_answer_logps (on the model loaded
         as notebook 05 loads it) vs ORPOTrainer.evaluate at eval batch 8 and 2 (the latter on a subset, extrapolated
         linearly; the output says so)
  same   the fast loss path vs TRL's on one fixed batch, same model and autocast: loss, NLL and odds-ratio parts, with
         the numerics-changing shortcuts off (the parity check) and on, plus TRL's own path on the fast kernels
Tokens/s counts real tokens only: non-pad tokens of chosen + rejected, prompt tokens included (the prompt is read
twice, once per answer), the same count for every run, so tokens/s ratios compare pairs per second. Each run also
reports `needed_tokens` (each pair's prompt once: chosen + rejected - their common prefix), `computed_tokens`
(what the forward actually ran: padded rows, or the packed row) and `ceiling_fraction`: the FLOPs a QLoRA step
needs (4 x the decoder's linear weights per needed token: forward + input gradient, frozen base; plus the lm_head
at the positions the loss reads; no checkpoint recompute, attention counted as free) over the time, as a fraction
of the bf16 matmul ceiling measured in the same run. seed and fast get the same --warmup optimizer steps, excluded from timing (the first steps
pay one-off costs: Triton/Liger kernel compilation, cuBLAS/SDPA heuristics, the caching allocator growing to the
batch shapes, paged optimizer state); each step's seconds are saved so the warm-up can be checked. Peak memory covers
all steps (the longest batch comes first under length grouping). `--tiny` runs the same plumbing on a tiny model
(CPU ok): a smoke test only.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, sliding_window=4096, rope_theta=10000.0,
                  max_position_embeddings=32768, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2)
TINY = dict(MISTRAL_7B, vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)
LORA = dict(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"], bias="none", task_type="CAUSAL_LM")
MAX_LENGTH = 1024
# The seed recipe, verbatim.
SEED = dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, gradient_checkpointing=True,
            optim="paged_adamw_8bit", learning_rate=8e-6, beta=0.1, lora_dropout=0.05, trainer="ORPOTrainer")
# The fast path itself is NOT described here: `fast` runs notebook 04's own cells (see notebook_cells below).
# FAST only seeds the optional --variants (micro-batch / checkpointed-layer sweeps on the same model), which are built
# by make_trainer like the seed and t4 runs; they mirror the h100 profile but are not the notebook's code.
FAST = dict(per_device_train_batch_size=16, gradient_accumulation_steps=1, gradient_checkpointing=True,
            checkpoint_layers=None, optim="adamw_torch_fused", learning_rate=8e-6, beta=0.1, lora_dropout=0.0,
            train_sampling_strategy="group_by_length", use_liger_kernel=True, trainer="FastORPOTrainer",
            share_prompt=True, logging_nan_inf_filter=False, non_blocking=True)
# The t4 profile (fp16 everywhere: a T4 has no bf16). Same pairs per optimizer step as the seed.
T4 = dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, gradient_checkpointing=True,
          checkpoint_layers=None, optim="paged_adamw_8bit", learning_rate=8e-6, beta=0.1, lora_dropout=0.0,
          train_sampling_strategy="group_by_length", use_liger_kernel=False, trainer="FastORPOTrainer",
          logging_nan_inf_filter=False, non_blocking=True)  # as notebook 04 sets them (the seed keeps the defaults)
LIGER_CONFIG = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                "fused_linear_cross_entropy": False}  # the loss path is ours: no logits-materializing patches
GIB = 2**30
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_04 = ROOT / "notebooks" / "04_orpo_training.ipynb"
# One marker per cell, in notebook order: LoRA config, ORPOConfig, trainer (+ checkpoint_layers, callbacks).
CELL_MARKERS = ("peft_config = LoraConfig(", "training_args = ORPOConfig(", "trainer = TrainerClass(")
# Notebook 01's "precision" block of environment.json, per device (the cells read these keys).
PRECISION = {
    "cuda": {"device": "cuda", "torch_dtype": "bfloat16", "bnb_4bit_compute_dtype": "bfloat16",
             "attn_implementation": "sdpa", "use_bf16": True, "use_fp16": False},
    "cpu": {"device": "cpu", "torch_dtype": "float32", "bnb_4bit_compute_dtype": "float32",
            "attn_implementation": "sdpa", "use_bf16": False, "use_fp16": False},
}
EVAL_SEED = 1  # synthetic_pairs seed of the held-out pairs (train pairs: 0)
NEVER = 10**6  # eval/save/logging cadence past any benchmark's end
TEMPLATE_WORDS = ["###", "User:", "Assistant:"]  # the chat template's words, so none of them is <unk>
TEMPLATE_TOKENS = 6  # BOS + "### User:" + "### Assistant:" around the prompt, EOS after each answer


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- inputs


def n_words(vocab_size: int) -> int:
    return vocab_size - 3 - len(TEMPLATE_WORDS)


def build_tokenizer(vocab_size: int):
    """A fast word-level tokenizer: <unk>, <s>, </s>, the chat template's words + w0..wN, split on whitespace.

    It carries the series' chat template (helpers.chat), so TRL renders the conversational pairs exactly as it does
    in notebook 04. No download.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from helpers.chat import CHAT_TEMPLATE

    words = TEMPLATE_WORDS + [f"w{i}" for i in range(n_words(vocab_size))]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", chat_template=CHAT_TEMPLATE, padding_side="right")


def synthetic_pairs(n: int, vocab_size: int, seed: int, max_length: int = MAX_LENGTH) -> list[dict]:
    """Pairs with UltraFeedback-like, right-skewed lengths (lognormal prompt/chosen/rejected, in tokens).

    Explicit-prompt conversational format, as notebook 02 writes it: prompt = [user message], chosen/rejected =
    [assistant message], plus the token-count columns 02 adds (counted with the chat template's tokens).
    Pairs whose prompt + longer answer (+ template tokens) exceed max_length are redrawn: the project drops overlong
    pairs rather than truncating them (PITFALLS 2-3). Words are Zipf-distributed ids (one word = one token).
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, n_words(vocab_size) + 1)
    p_word = 1.0 / ranks
    p_word /= p_word.sum()
    rows = []
    while len(rows) < n:
        p = max(4, int(rng.lognormal(np.log(135), 1.0)))
        c = max(8, int(rng.lognormal(np.log(300), 0.7)))
        r = max(8, int(rng.lognormal(np.log(250), 0.8)))
        if p + max(c, r) + TEMPLATE_TOKENS > max_length:
            continue
        words = rng.choice(len(ranks), size=p + c + r, p=p_word)
        text = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
        pt, ct, rt = p + TEMPLATE_TOKENS - 1, c + 1, r + 1
        rows.append({"prompt": [{"role": "user", "content": text(words[:p])}],
                     "chosen": [{"role": "assistant", "content": text(words[p:p + c])}],
                     "rejected": [{"role": "assistant", "content": text(words[p + c:])}],
                     "prompt_tokens": pt, "chosen_tokens": ct, "rejected_tokens": rt,
                     "pair_tokens": pt + max(ct, rt)})
    return rows


def make_data(train_rows: list[dict], eval_rows: list[dict]):
    """`data` as notebook 04 loads it from notebook 02's output: a DatasetDict with train / validation splits
    (the held-out pairs stand in for both the validation and the test set here)."""
    import datasets

    return datasets.DatasetDict(train=datasets.Dataset.from_list(train_rows),
                                validation=datasets.Dataset.from_list(eval_rows))


def select_like_notebook(data):
    """train_dataset / eval_dataset exactly as notebook 04's data cell selects them (length columns stay behind)."""
    columns = ["prompt", "chosen", "rejected"]
    train_dataset = data["train"].select_columns(columns)
    eval_dataset = data["validation"].select_columns(columns)
    return train_dataset, eval_dataset


# ----------------------------------------------------------------------------------------------- notebook 04


def notebook_cells(path: Path = NOTEBOOK_04, markers=CELL_MARKERS) -> list[str]:
    """The source of notebook 04's code cells holding `markers`: exactly one cell per marker, in notebook order."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    code = [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]
    picked = []
    for marker in markers:
        hits = [(i, src) for i, src in code if marker in src]
        if len(hits) != 1:
            raise RuntimeError(f"{path}: expected exactly one code cell containing {marker!r}, found {len(hits)} "
                               f"(cells {[i for i, _ in hits]}); update CELL_MARKERS in benchmarks/orpo_speed.py")
        picked.append(hits[0])
    order = [i for i, _ in picked]
    if order != sorted(order):
        raise RuntimeError(f"{path}: cells for {markers} are out of order ({order})")
    return [src for _, src in picked]


def benchmark_overrides(steps: int) -> dict:
    """What a benchmark must override in the profile: the run length and cadences that would interrupt timing."""
    return {"max_steps": steps, "eval_steps": NEVER, "save_steps": NEVER, "logging_steps": NEVER}


def run_notebook_cells(namespace: dict, path: Path = NOTEBOOK_04) -> dict:
    """Exec notebook 04's LoRA, ORPOConfig and trainer cells, verbatim and in order, in `namespace` (returned).

    `namespace` must hold what the notebook's earlier cells define: cfg, precision, run, model, tokenizer, data,
    train_dataset, eval_dataset. The trainer ends up in namespace["trainer"].
    """
    needed = {"cfg", "precision", "run", "model", "tokenizer", "data", "train_dataset", "eval_dataset"}
    missing = needed - set(namespace)
    if missing:
        raise KeyError(f"namespace lacks {sorted(missing)}")
    namespace.setdefault("__name__", "notebook_04")
    for k, src in enumerate(notebook_cells(path)):
        exec(compile(src, f"<{Path(path).name} cell for {CELL_MARKERS[k]!r}>", "exec"), namespace)
    return namespace


def notebook_namespace(cfg, device: str, run_root: Path, model, tokenizer, data) -> dict:
    """The names notebook 04's earlier cells would have defined (its setup, data and model cells)."""
    from helpers.rundir import RunDir

    run = RunDir(Path(run_root))
    run.root.mkdir(parents=True, exist_ok=True)
    train_dataset, eval_dataset = select_like_notebook(data)
    return {"cfg": cfg, "precision": dict(PRECISION[device]), "run": run, "model": model, "tokenizer": tokenizer,
            "data": data, "train_dataset": train_dataset, "eval_dataset": eval_dataset, "torch": torch}


def build_and_save_model(path: Path, config: dict, device: str, dtype: torch.dtype, tokenizer) -> float:
    """Random-weight Mistral with `config`, built directly on `device` in `dtype`, saved with save_pretrained."""
    from transformers import MistralConfig, MistralForCausalLM

    t0 = time.perf_counter()
    cfg = MistralConfig(**config, dtype=dtype)
    with torch.device(device):
        torch.manual_seed(0)
        model = MistralForCausalLM(cfg).to(dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    gc.collect()
    empty_cache()
    return time.perf_counter() - t0


def load_4bit(path: Path, compute_dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=compute_dtype)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=compute_dtype,
                                                attn_implementation="sdpa", device_map={"": device})


# ----------------------------------------------------------------------------------------------- measuring


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> dict:
    if not torch.cuda.is_available():
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2)}


def instrument(trainer):
    """Count real tokens per optimizer step and stamp each step's end, without changing the trainer's class (the
    notebook's cell picks the class): an instance-level compute_loss wrapper + a callback. At the last step the
    Trainer's end-of-run evaluation and checkpoint are switched off (after the last stamp).

    Nothing here waits for the GPU during training: a step's end is a CUDA event recorded in the stream (its time is
    when the GPU gets there), token counts stay on the GPU, and both are read once, when training ends. A
    `torch.cuda.synchronize()` per step, as this benchmark did before, idles the GPU at every step boundary while
    the CPU prepares the next batch: that is the benchmark's cost, not the trainer's, and a training run does not pay
    it (notebook 04 trains with no per-step sync)."""
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()
    clock = lambda: torch.cuda.Event(enable_timing=True) if cuda else time.perf_counter()  # noqa: E731

    def stamp():
        mark = clock()
        if cuda:
            mark.record()
        return mark

    class Stamps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            sync()
            trainer.begin = (time.perf_counter(), stamp())

        def on_step_end(self, args, state, control, **kw):
            trainer.stamps.append((stamp(), trainer.counts_now, trainer.padded_now, trainer.computed_now))
            trainer.checkpointed_per_step.append(getattr(trainer, "last_checkpointed_layers", None))
            trainer.counts_now, trainer.padded_now, trainer.computed_now = 0, 0, 0
            if state.global_step >= state.max_steps:
                control.should_evaluate = control.should_save = False
            return control

        def on_train_end(self, args, state, control, **kw):  # resolve events and counts: the one wait
            sync()
            wall0, mark0 = trainer.begin
            seconds = (lambda m: wall0 + mark0.elapsed_time(m) / 1e3) if cuda else (lambda m: m)

            def resolve(entry):  # (mark, counts, padded, computed) -> (seconds, real, padded, needed, computed, head)
                mark, counts, padded, computed = entry
                real, needed, head = counts.tolist() if torch.is_tensor(counts) else (0, 0, 0)
                return seconds(mark), int(real), padded, int(needed), computed, int(head)

            trainer.stamps = [resolve(entry) for entry in trainer.stamps]

    inner = trainer.compute_loss

    def compute_loss(model, inputs, *a, **kw):
        if model.training:
            trainer.counts_now = trainer.counts_now + pair_token_counts(inputs, as_tensor=True)
            width = max(inputs["chosen_input_ids"].shape[1], inputs["rejected_input_ids"].shape[1])
            trainer.padded_now += 2 * inputs["chosen_input_ids"].shape[0] * width
            trainer.last_packed_tokens = None
        out = inner(model, inputs, *a, **kw)
        if model.training:  # the packed row's length when the trainer shared prompts, else the padded rows
            packed = getattr(trainer, "last_packed_tokens", None)
            trainer.computed_now += packed if packed is not None else (
                2 * inputs["chosen_input_ids"].shape[0] * width)
        return out

    trainer.stamps, trainer.checkpointed_per_step = [], []
    trainer.counts_now, trainer.padded_now, trainer.computed_now = 0, 0, 0
    trainer.compute_loss = compute_loss
    trainer.add_callback(Stamps())
    return trainer


def pair_token_counts(inputs, as_tensor: bool = False):
    """(real, needed, head) tokens of a TRL ORPO batch: real = non-pad tokens of chosen + rejected (prompt twice);
    needed = each pair's tokens with the common prefix of its two sequences (the prompt) once; head = the positions
    the loss reads logits at (every chosen token after the first: the NLL; every rejected answer token).
    `as_tensor`: the three as one tensor on the batch's device (no wait for the GPU), else ints."""
    c, r = inputs["chosen_input_ids"], inputs["rejected_input_ids"]
    cm, rm = inputs["chosen_attention_mask"], inputs["rejected_attention_mask"]
    w = min(c.shape[1], r.shape[1])
    same = (c[:, :w] == r[:, :w]) & (cm[:, :w] == 1) & (rm[:, :w] == 1)
    prefix = same.long().cumprod(1).sum()
    real = cm.sum() + rm.sum()
    head = (cm[:, 1:] == 1).sum() + (inputs["rejected_labels"][:, 1:] != -100).sum()
    counts = torch.stack([real, real - prefix, head])
    if as_tensor:
        return counts
    real, needed, head = counts.tolist()  # one transfer
    return int(real), int(needed), int(head)


def throughput(stamps: list, warmup: int, t_start: float, tail: int = 0) -> dict:
    """Tokens/s and s/step over the steps after `warmup`, minus the last `tail` (profiled) steps
    (each stamp: end time, real tokens, padded tokens[, needed tokens, computed tokens, lm_head positions])."""
    ends = [t_start] + [s[0] for s in stamps]
    last = len(stamps) - tail
    timed_steps = stamps[warmup:last]
    seconds = ends[last] - ends[warmup]
    tokens = sum(s[1] for s in timed_steps)
    padded = sum(s[2] for s in timed_steps)
    step_s = [round(b - a, 3) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    warm_s = sum(step_s[:warmup])
    warm_tok = sum(s[1] for s in stamps[:warmup])
    return {"timed_steps": len(timed_steps), "warmup_steps": warmup, "seconds": round(seconds, 2),
            "s_per_step": round(seconds / max(1, len(timed_steps)), 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "real_tokens": tokens, "padding_fraction": round(1 - tokens / max(1, padded), 3),
            "warmup_tokens_per_s": round(warm_tok / warm_s, 1) if warm_s > 0 else None,
            "step_seconds": step_s, "step_tokens": [s[1] for s in stamps],
            **({"needed_tokens": sum(s[3] for s in timed_steps), "computed_tokens": sum(s[4] for s in timed_steps),
                "lm_head_positions": sum(s[5] for s in timed_steps),
                "computed_over_needed": round(sum(s[4] for s in timed_steps)
                                              / max(1, sum(s[3] for s in timed_steps)), 3)}
               if timed_steps and len(timed_steps[0]) > 3 else {})}


def ceiling_fraction(run: dict, config: dict, ceiling_tflops: float | None) -> dict:
    """Needed FLOPs per second of a training run as a fraction of the measured bf16 matmul ceiling (see the module
    docstring: 4 x linear weights per needed token, 4 x lm_head per position the loss reads; nothing else)."""
    if not ceiling_tflops or not run.get("needed_tokens") or not run.get("seconds"):
        return {}
    flops = (4 * linear_params(config) * run["needed_tokens"]
             + 4 * config["vocab_size"] * config["hidden_size"] * run["lm_head_positions"])
    achieved = flops / run["seconds"] / 1e12
    return {"needed_tflops_per_s": round(achieved, 1), "ceiling_tflops": ceiling_tflops,
            "ceiling_fraction": round(achieved / ceiling_tflops, 3)}


# (Liger cannot be switched off per variant: the fast run has already patched the shared model's modules.)
VARIANT_FLAGS = {"cudnn": ("sdpa_backends", None), "nofuse": ("fuse_lora", False),
                 "random": ("train_sampling_strategy", None), "share": ("share_prompt", True),
                 "noshare": ("share_prompt", False), "flex": ("share_prompt_backend", "flex"),
                 "paged": ("optim", "paged_adamw_8bit"), "chunk4k": ("logits_chunk", 4096),
                 "fixed": ("adaptive_checkpointing", False)}


def variant(spec: str, base: dict) -> tuple[dict, str]:
    """'MB:LAYERS[:flag+flag]' -> trainer settings and a name. LAYERS: checkpointed decoder layers, 'all' or a number
    (0 = no checkpointing). Flags switch one speed-up off: cudnn (PyTorch's own SDPA choice), nofuse (PEFT's LoRA
    forward), random (no length grouping), noshare (no prefix sharing), flex (prefix sharing through FlexAttention
    instead of the varlen kernel), paged (paged 8-bit AdamW instead of fused AdamW), chunk4k (lm_head logits 4,096
    rows at a time instead of 2,048), fixed (the same checkpointed layers for every batch, not sized per batch);
    share switches prefix sharing ON. Grad-accum keeps at least 8 pairs per step."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit() or not (parts[1] == "all" or parts[1].isdigit()):
        raise SystemExit(f"--variants {spec!r}: expected MICRO_BATCH:LAYERS[:flag+flag], e.g. 16:all or 16:28:cudnn")
    mb, layers = int(parts[0]), parts[1]
    kind = dict(base, per_device_train_batch_size=mb, gradient_accumulation_steps=max(1, 8 // mb))
    if layers == "all":
        kind.update(checkpoint_layers=None, gradient_checkpointing=True)
    else:
        kind.update(checkpoint_layers=int(layers), gradient_checkpointing=int(layers) > 0)
    flags = [f for f in (parts[2].split("+") if len(parts) > 2 else []) if f]
    for flag in flags:
        if flag not in VARIANT_FLAGS:
            raise SystemExit(f"--variants {spec!r}: unknown flag {flag!r}; known: {sorted(VARIANT_FLAGS)}")
        key, value = VARIANT_FLAGS[flag]
        kind[key] = value
    return kind, f"fast_mb{mb}_ckpt{layers}" + "".join(f"_{f}" for f in flags)


def make_trainer(kind: dict, model, data, tokenizer, out_dir: Path, steps: int, precision: str, use_cpu: bool,
                 eval_data=None, peft=True):
    from peft import LoraConfig
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from engine.fast_orpo import FastORPOTrainer

    optim = kind["optim"] if torch.cuda.is_available() else "adamw_torch"  # paged 8-bit Adam is CUDA-only
    fields = dict(per_device_train_batch_size=kind["per_device_train_batch_size"],
                  gradient_accumulation_steps=kind["gradient_accumulation_steps"],
                  gradient_checkpointing=kind["gradient_checkpointing"], optim=optim,
                  logging_nan_inf_filter=kind.get("logging_nan_inf_filter", True),
                  accelerator_config={"non_blocking": kind.get("non_blocking", False)},
                  learning_rate=kind["learning_rate"], beta=kind["beta"], max_length=MAX_LENGTH,
                  lr_scheduler_type="linear", warmup_steps=1, max_steps=steps, logging_steps=10_000,
                  save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
                  output_dir=str(out_dir), bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=use_cpu,
                  per_device_eval_batch_size=8, dataloader_num_workers=0, seed=0)
    if kind.get("train_sampling_strategy"):
        fields["train_sampling_strategy"] = kind["train_sampling_strategy"]
    if kind.get("use_liger_kernel"):
        fields.update(use_liger_kernel=True, liger_kernel_config=LIGER_CONFIG)
    cls = FastORPOTrainer if kind["trainer"] == "FastORPOTrainer" else ORPOTrainer
    peft_config = LoraConfig(lora_dropout=kind["lora_dropout"], **LORA) if peft else None
    trainer = cls(model=model, args=ORPOConfig(**fields), train_dataset=data, eval_dataset=eval_data,
                  processing_class=tokenizer, peft_config=peft_config)
    if kind["trainer"] == "FastORPOTrainer":
        trainer.checkpoint_layers = kind.get("checkpoint_layers")
        for key in ("sdpa_backends", "fuse_lora", "share_prompt", "share_prompt_backend", "logits_chunk",
                    "adaptive_checkpointing"):
            if key in kind:
                setattr(trainer, key, kind[key])
    return instrument(trainer)


class StepProfiler:
    """torch.profiler over the last `steps` optimizer steps of a training run (those steps are left out of timing).

    Reports what a step's wall time is made of: GPU busy time (sum of kernel times; one stream) vs wall, kernel count,
    and the ops with the most GPU and CPU self time, so a speed-up can aim at a measured cost."""

    def __init__(self, steps: int):
        self.steps, self.prof, self.t0, self.summary = steps, None, None, None

    def callback(self, trainer):
        from transformers import TrainerCallback

        outer = self

        class Cb(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if outer.prof is None and state.global_step == state.max_steps - outer.steps:
                    acts = [torch.profiler.ProfilerActivity.CPU] + (
                        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                    outer.prof = torch.profiler.profile(activities=acts, record_shapes=True)
                    sync()
                    outer.prof.__enter__()
                    outer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if outer.prof is not None and outer.summary is None and state.global_step >= state.max_steps:
                    sync()
                    wall = time.perf_counter() - outer.t0
                    outer.prof.__exit__(None, None, None)
                    outer.summary = summarize_profile(outer.prof, wall, outer.steps)

        return Cb()


def summarize_profile(prof, wall: float, steps: int, top: int = 18) -> dict:
    events = prof.key_averages()
    dev = lambda e: getattr(e, "self_device_time_total", 0) or 0  # noqa: E731  (microseconds)
    kernels = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time_total if hasattr(e, "device_time_total") else 0 for e in kernels) / 1e6
    by_dev = sorted(events, key=dev, reverse=True)[:top]
    by_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"steps": steps, "wall_s": round(wall, 3), "gpu_kernel_s": round(busy, 3),
            "gpu_busy_fraction": round(busy / wall, 3) if wall else None, "kernels": len(kernels),
            "top_gpu_self_ms": [(e.key[:90], round(dev(e) / 1e3, 1), e.count) for e in by_dev],
            "top_cpu_self_ms": [(e.key[:90], round(e.self_cpu_time_total / 1e3, 1), e.count) for e in by_cpu],
            "gpu_idle_ms_by_cpu_op": idle_by_cpu_op(prof.events(), kernels),
            "top_gpu_self_ms_by_shape": [(e.key[:40], str(e.input_shapes)[:120], round(dev(e) / 1e3, 1), e.count)
                                         for e in sorted(prof.key_averages(group_by_input_shape=True), key=dev,
                                                         reverse=True)[:top]]}


def idle_by_cpu_op(events, kernels, top: int = 15, min_gap_us: float = 20.0) -> list:
    """Where the GPU waits: every gap of more than `min_gap_us` between kernels, charged to the outermost CPU ops
    running on the CPU during the gap (by overlap; "(no op)" = Python between ops). [(op, idle ms, gaps)]."""
    spans = sorted((k.time_range.start, k.time_range.end) for k in kernels)
    gaps, end = [], None
    for a, b in spans:
        if end is not None and a - end > min_gap_us:
            gaps.append((end, a))
        end = b if end is None else max(end, b)
    cpu = sorted(((e.time_range.start, e.time_range.end, e.key) for e in events
                  if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU and e.cpu_parent is None),
                 key=lambda t: t[0])
    reach = list(itertools.accumulate((c[1] for c in cpu), max))  # latest end among the ops started so far
    charged: dict[str, list] = {}
    for a, b in gaps:
        covered = 0.0
        i = bisect.bisect_right(reach, a)  # ops before i all ended by the gap's start, however long they ran
        for s, e, key in cpu[i:]:
            if s >= b:
                break
            overlap = min(b, e) - max(a, s)
            if overlap > 0:
                entry = charged.setdefault(key[:80], [0.0, 0])
                entry[0] += overlap
                entry[1] += 1
                covered += overlap
        if b - a - covered > 0:
            entry = charged.setdefault("(no op)", [0.0, 0])
            entry[0] += b - a - covered
            entry[1] += 1
    ranked = sorted(charged.items(), key=lambda kv: -kv[1][0])[:top]
    return [(key, round(us / 1e3, 1), n) for key, (us, n) in ranked]


def run_training(name: str, trainer, warmup: int, profile_steps: int = 0) -> dict:
    gc.collect()
    empty_cache()
    reset_peak()
    log(f"{name}: training {trainer.args.max_steps} steps ({warmup} warm-up"
        + (f", last {profile_steps} profiled and untimed)" if profile_steps else ")"))
    profiler = StepProfiler(profile_steps) if profile_steps else None
    if profiler:
        trainer.add_callback(profiler.callback(trainer))
    sync()
    t0 = time.perf_counter()
    trainer.train()
    res = throughput(trainer.stamps, warmup, t0, tail=profile_steps)
    res.update(peak_gib())
    layers = [k for k in trainer.checkpointed_per_step if k is not None]
    if layers:  # FastORPOTrainer with checkpoint_layers: how many layers each step checkpointed (all steps)
        res["checkpointed_layers"] = {"min": min(layers), "max": max(layers),
                                      "mean": round(sum(layers) / len(layers), 2), "per_step": layers}
    if profiler:
        res["profile"] = profiler.summary
        log(f"{name}: profile {json.dumps(profiler.summary, indent=1)}")
    log(f"{name}: { {k: v for k, v in res.items() if k not in ('step_seconds', 'step_tokens')} }")
    log(f"{name}: seconds per step {res['step_seconds']}")
    return res


def free() -> None:
    gc.collect()
    empty_cache()


# ----------------------------------------------------------------------------------------------- checks


SAME_MATH_MODES = {
    # name: (loss path, drop the mask when right-padded, fast kernels: flash SDPA + fused LoRA)
    "trl": ("trl", False, False),              # TRL's own path, as ORPOTrainer runs it
    "fast_exact": ("fast", False, False),      # our loss path with every numerics-changing shortcut off
    "fast": ("fast", True, True),              # our loss path as notebook 04 trains with it
    "trl_fast_kernels": ("trl", False, True),  # TRL's path on our kernels: what the kernel choice alone changes
    "shared_exact": ("shared_dense", False, False),  # prefix sharing, dense boolean mask + PyTorch's SDPA choice
    "shared": ("shared", True, True),                # prefix sharing as trained ("auto": varlen kernel on a GPU)
}


def same_math(trainer, n_pairs: int = 4) -> dict:
    """Fast vs TRL loss path on one fixed batch, same model, same autocast, no grad, in the modes above.

    The issue's parity rule applies to `fast_exact` (shortcuts off). With them on, bf16 results depend on which
    kernels run (flash vs cuDNN attention, one fused addmm vs PEFT's three ops round differently); `trl_fast_kernels`
    measures that effect on TRL's own path, so the `fast` difference can be read against it.
    """
    from trl.experimental.orpo import ORPOTrainer

    rows = [trainer.train_dataset[i] for i in range(n_pairs)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    model = trainer.model
    dtype = torch.bfloat16 if trainer.args.bf16 else (torch.float16 if trainer.args.fp16 else None)
    ctx = torch.autocast(trainer.accelerator.device.type, dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    saved = trainer.drop_padding_mask, trainer.sdpa_backends, trainer.fuse_lora
    saved_share, saved_backend = trainer.share_prompt, trainer.share_prompt_backend
    out = {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), ctx:
            for name, (path, drop, fast_kernels) in SAME_MATH_MODES.items():
                trainer.drop_padding_mask = drop
                trainer.sdpa_backends, trainer.fuse_lora = (saved[1], saved[2]) if fast_kernels else (None, False)
                trainer.share_prompt = path.startswith("shared")
                trainer.share_prompt_backend = "dense" if path == "shared_dense" else saved_backend
                fwd = ORPOTrainer.concatenated_forward if path == "trl" else type(trainer).concatenated_forward
                with trainer.kernels():
                    c, r, _, _, nll = fwd(trainer, model, batch)
                ratio_terms = trainer.odds_ratio_loss(c, r)[0]
                out[name] = {"loss": float(nll - ratio_terms.mean()), "nll": float(nll),
                             "odds_ratio": float(ratio_terms.mean())}
    finally:
        model.train(was)
        trainer.drop_padding_mask, trainer.sdpa_backends, trainer.fuse_lora = saved
        trainer.share_prompt, trainer.share_prompt_backend = saved_share, saved_backend

    def rel(a: str, b: str) -> float:
        return max(abs(out[a][k] - out[b][k]) / max(abs(out[b][k]), 1e-12) for k in out[b])

    out["max_rel_diff"] = {"fast_exact_vs_trl": rel("fast_exact", "trl"), "fast_vs_trl": rel("fast", "trl"),
                           "trl_fast_kernels_vs_trl": rel("trl_fast_kernels", "trl"),
                           "fast_vs_trl_fast_kernels": rel("fast", "trl_fast_kernels"),
                           "shared_exact_vs_trl": rel("shared_exact", "trl"), "shared_vs_trl": rel("shared", "trl"),
                           "shared_vs_trl_fast_kernels": rel("shared", "trl_fast_kernels")}
    out["ok_1e-3"] = out["max_rel_diff"]["fast_exact_vs_trl"] <= 1e-3
    # Prefix sharing cannot match TRL bit for bit in bf16 even with every other shortcut off: the packed row gives
    # the matmuls other shapes (cuBLAS picks other kernels) and attention runs another kernel. Its exactness is
    # established in fp32 (tests/test_prefix_sharing.py); here it passes if it is within 1e-3 or within what the
    # kernel choice alone moves TRL's own loss (trl_fast_kernels_vs_trl), whichever is larger.
    tol = max(1e-3, out["max_rel_diff"]["trl_fast_kernels_vs_trl"])
    out["shared_tolerance"] = tol
    out["shared_ok"] = max(out["max_rel_diff"]["shared_exact_vs_trl"], out["max_rel_diff"]["shared_vs_trl"]) <= tol
    return out


def time_evaluate(trainer, dataset, batch_size: int) -> tuple[float, dict]:
    trainer.args.per_device_eval_batch_size = batch_size
    gc.collect()
    empty_cache()
    sync()
    t0 = time.perf_counter()
    metrics = trainer.evaluate(eval_dataset=dataset)
    sync()
    return time.perf_counter() - t0, metrics


def load_like_notebook_05(model_path: Path, adapter_path: Path, device: str, liger: bool = True):
    """The model notebook 05 scores with: the base in 4-bit (BitsAndBytesConfig as notebook 03 saves it) plus the
    trained adapter via PeftModel.from_pretrained, in eval mode, and on a GPU Liger's kernels as the h100 profile
    (use_liger_kernel) has notebook 05 apply them (its model cell, minus the run-folder plumbing)."""
    from peft import PeftModel

    from engine.kernels import apply_liger_kernels

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = load_4bit(model_path, dtype, device)
    model = PeftModel.from_pretrained(base, str(adapter_path)).eval()
    if liger and device == "cuda":
        log(apply_liger_kernels(base, rope=True, rms_norm=True, swiglu=True))
    return model


def eval_speed(trainer, eval_rows, subset: int, scorer_model, tokenizer, batch_sizes=(8, 2),
               share_prompt: bool = True, shared_budgets: tuple = (), unshared: bool = True) -> dict:
    """Notebook 05's held-out scoring (helpers.scoring.mean_answer_logps, chosen + rejected answers of every pair)
    vs ORPOTrainer.evaluate on the same pairs.

    evaluate runs on the first `subset` pairs at each eval batch size in `batch_sizes` (after an untimed pass over
    the same pairs at that batch size: its first pass is 26-34% slower, peer_benchmark showed) and is extrapolated
    linearly to all pairs; the faster batch size is the reference. The scorer runs on all pairs, on `scorer_model` loaded the way notebook 05 loads it. Agreement: the scorer on the trainer's
    own model and the subset reproduces evaluate's mean chosen/rejected log-probs. With `share_prompt`, the scorer
    is also timed with prefix sharing (chosen + rejected in one call), and its scores compared with the unshared ones;
    `shared_budgets` times it again at other `max_batch_tokens` (notebook 05 uses the default, 16384).
    `unshared=False` skips timing the unshared scorer on all pairs (notebook 05 shares prompts in the h100 profile).
    """
    import functools

    from trl.data_utils import maybe_apply_chat_template

    from helpers.scoring import mean_answer_logps as scorer

    mean_answer_logps = functools.partial(scorer, fast=True)  # as notebook 05 scores on the GPU profiles

    n = len(eval_rows)
    tokenized = eval_rows.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tokenizer}).map(
        trainer.tokenize_row)
    evaluate, metrics = {}, None
    for bs in batch_sizes:
        time_evaluate(trainer, tokenized.select(range(subset)), bs)  # warm-up over the same shapes, untimed
        t_eval, metrics = time_evaluate(trainer, tokenized.select(range(subset)), bs)
        evaluate[bs] = {"seconds_measured": round(t_eval, 2), "seconds_extrapolated": round(t_eval * n / subset, 1),
                        "pairs_per_s": round(subset / t_eval, 2)}
        log(f"evaluate, eval batch {bs}: {evaluate[bs]}")
    ref_bs = min(evaluate, key=lambda b: evaluate[b]["seconds_extrapolated"])

    sub = eval_rows.select(range(subset))
    agree = {"evaluate_logps_chosen": metrics.get("eval_logps/chosen"),
             "scorer_logps_chosen": float(np.mean(mean_answer_logps(trainer.model, tokenizer, sub["prompt"],
                                                                    sub["chosen"]))),
             "evaluate_logps_rejected": metrics.get("eval_logps/rejected"),
             "scorer_logps_rejected": float(np.mean(mean_answer_logps(trainer.model, tokenizer, sub["prompt"],
                                                                      sub["rejected"])))}
    prompts, chosen, rejected = eval_rows["prompt"], eval_rows["chosen"], eval_rows["rejected"]
    mean_answer_logps(scorer_model, tokenizer, prompts[:16], chosen[:16])  # warm-up, untimed
    t_all = None
    if unshared:
        sync()
        t0 = time.perf_counter()
        mean_answer_logps(scorer_model, tokenizer, prompts, chosen)  # as notebook 05 calls it without sharing
        mean_answer_logps(scorer_model, tokenizer, prompts, rejected)
        sync()
        t_all = time.perf_counter() - t0
    t_ref = evaluate[ref_bs]["seconds_extrapolated"]
    # the same scores with each prompt computed once: chosen and rejected in ONE call, share_prompt=True
    shared = {}
    if share_prompt:
        both = lambda k: mean_answer_logps(scorer_model, tokenizer, prompts[:k] + prompts[:k],  # noqa: E731
                                           chosen[:k] + rejected[:k], share_prompt=True)
        k = min(subset, n)
        sub_shared = both(k)  # warm-up (FlexAttention compiles here), untimed; checked against the unshared scores
        sub_plain = (mean_answer_logps(scorer_model, tokenizer, prompts[:k], chosen[:k])
                     + mean_answer_logps(scorer_model, tokenizer, prompts[:k], rejected[:k]))
        sync()
        t0 = time.perf_counter()
        both(n)
        sync()
        t_shared = time.perf_counter() - t0
        shared = {"scorer_shared_seconds": round(t_shared, 2), "speedup_shared": round(t_ref / t_shared, 2),
                  "shared_over_unshared_scorer": round(t_all / t_shared, 2) if t_all else None,
                  "shared_max_abs_diff_on_subset": float(np.max(np.abs(np.subtract(sub_shared, sub_plain))))}
        log(f"scorer with prompt sharing: {shared}")
        for budget in shared_budgets:  # the same call with another row size: fewer, larger rows
            sync()
            t0 = time.perf_counter()
            mean_answer_logps(scorer_model, tokenizer, [*prompts, *prompts], [*chosen, *rejected], share_prompt=True,
                              max_batch_tokens=budget)
            sync()
            t_budget = time.perf_counter() - t0
            shared.setdefault("shared_by_max_batch_tokens", {})[str(budget)] = {
                "seconds": round(t_budget, 2), "speedup": round(t_ref / t_budget, 2)}
            log(f"scorer with prompt sharing, max_batch_tokens {budget}: {t_budget:.2f} s")
    return {
        "pairs": n, "evaluate_pairs_run": subset, "evaluate": evaluate, "evaluate_reference_batch_size": ref_bs,
        "evaluate_seconds_extrapolated": t_ref,
        "evaluate_extrapolated": "linearly, from the subset" if subset < n else "no (all pairs run)",
        "scorer": "helpers.scoring.mean_answer_logps (notebook 05), chosen + rejected, model loaded as in notebook 05",
        "scorer_seconds": round(t_all, 2) if t_all else None,
        "scorer_pairs_per_s": round(n / t_all, 2) if t_all else None,
        "speedup": round(t_ref / t_all, 2) if t_all else None, "agreement_on_subset": agree, **shared,
    }


def linear_params(config: dict) -> int:
    """Weights of the decoder's linear layers (q, k, v, o, gate, up, down) x layers: 2 FLOPs each per token."""
    h, i, kv = config["hidden_size"], config["intermediate_size"], config["num_key_value_heads"] * config["head_dim"]
    return config["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * i)


def scoring_bound(result: dict, config: dict = MISTRAL_7B) -> dict:
    """How fast held-out scoring could possibly be on this GPU: the decoder's linear-layer FLOPs for the eval pairs
    (each answer with its prompt, as scored; and with each prompt computed once, as no scorer here does) at the
    best bf16 matmul rate measured in the same run, attention, norms, the lm_head and dequantization counted as free.
    The evaluate time divided by that floor is the largest speed-up any exact scorer can show against it."""
    e, ceiling = result.get("eval"), max((result.get("matmul_ceiling_tflops") or {}).values(), default=None)
    if not e or not ceiling:
        return {}
    rows = synthetic_pairs(e["pairs"], config["vocab_size"], seed=EVAL_SEED)  # the eval pairs, regenerated
    as_scored = sum(2 * r["prompt_tokens"] + r["chosen_tokens"] + r["rejected_tokens"] for r in rows)
    prompt_once = sum(r["prompt_tokens"] + r["chosen_tokens"] + r["rejected_tokens"] for r in rows)
    out = {"matmul_ceiling_tflops": ceiling, "tokens_as_scored": as_scored, "tokens_prompt_once": prompt_once}
    for name, tokens in (("as_scored", as_scored), ("prompt_once", prompt_once)):
        floor = 2 * linear_params(config) * tokens / (ceiling * 1e12)
        out[f"floor_seconds_{name}"] = round(floor, 1)
        out[f"max_speedup_{name}"] = round(e["evaluate_seconds_extrapolated"] / floor, 2)
    if e.get("scorer_seconds"):
        out["scorer_over_floor"] = round(e["scorer_seconds"] / out["floor_seconds_as_scored"], 2)
    if e.get("scorer_shared_seconds"):  # the shared scorer computes each prompt once: its floor is prompt_once's
        out["shared_scorer_over_floor"] = round(e["scorer_shared_seconds"] / out["floor_seconds_prompt_once"], 2)
    return out


def matmul_ceiling(device: str, tokens: int = 16384) -> dict:
    """bf16 TFLOP/s of plain cuBLAS matmuls at Mistral-7B's MLP/attention shapes: the ceiling any path here meets."""
    if device != "cuda":
        return {}
    out = {}
    for name, (k, n) in {"up/gate 4096->14336": (4096, 14336), "down 14336->4096": (14336, 4096),
                         "q/o 4096->4096": (4096, 4096)}.items():
        x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        sync()
        t0 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        sync()
        out[name] = round(2 * tokens * k * n * reps / (time.perf_counter() - t0) / 1e12, 1)
        del x, w
    empty_cache()
    return out


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ["torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "liger-kernel",
                 "triton", "tokenizers"]:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def print_table(result: dict) -> None:
    rows = [("config", "tokens/s", "s/step", "pairs/step", "pad frac", "computed/needed", "ceiling frac",
             "peak alloc GiB", "peak reserved GiB")]
    for name, r in result["runs"].items():
        if "tokens_per_s" in r:
            rows.append((name, f"{r['tokens_per_s']:.0f}", f"{r['s_per_step']:.2f}", str(r.get("pairs_per_step")),
                         "-" if r.get("share_prompt") else f"{r['padding_fraction']:.2f}",  # packed: no pads
                         str(r.get("computed_over_needed")), str(r.get("ceiling_fraction")),
                         str(r["peak_allocated_gib"]), str(r["peak_reserved_gib"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows))
    s = result["summary"]
    print(f"\nfast / seed tokens/s: {s.get('speedup_fast_over_seed', 'n/a (one of them skipped)')}x "
          f"(target >= 6.0 at peak <= 40 GiB; fast = notebook 04's h100 path, prefix sharing as its profile says); "
          f"warm-up {result['args']['warmup']} steps each, untimed")
    if "speedup_shared_over_seed" in s:
        print(f"shared (prefix sharing) / seed tokens/s: {s['speedup_shared_over_seed']}x (target >= 6.0); "
              f"shared / fast: {s.get('speedup_shared_over_fast')}x; peak {s['shared_peak_allocated_gib']} GiB")
    if "t4_peak_allocated_gib" in s:
        print(f"t4 settings peak memory: {s['t4_peak_allocated_gib']} GiB allocated (target <= 14)")
    if "eval" in result:
        e = result["eval"]
        ev = e["evaluate"][e["evaluate_reference_batch_size"]]
        print(f"held-out scoring of {e['pairs']} pairs: notebook 05's scorer without sharing {e['scorer_seconds']} s"
              f" vs ORPOTrainer.evaluate {e['evaluate_seconds_extrapolated']} s at eval batch "
              f"{e['evaluate_reference_batch_size']} ({e['evaluate_extrapolated']}; ran {e['evaluate_pairs_run']} "
              f"pairs in {ev['seconds_measured']} s): {e['speedup']}x")
        if e.get("bound"):
            b = e["bound"]
            print(f"  bound: the decoder's matmuls alone, at this GPU's measured {b['matmul_ceiling_tflops']} TFLOP/s, "
                  f"take {b['floor_seconds_as_scored']} s for these pairs (prompt once per pair: "
                  f"{b['floor_seconds_prompt_once']} s): no exact scorer beats evaluate by more than "
                  f"{b['max_speedup_as_scored']}x ({b['max_speedup_prompt_once']}x); the unshared scorer is "
                  f"{b.get('scorer_over_floor')}x its floor, the shared one {b.get('shared_scorer_over_floor')}x")
        if "scorer_shared_seconds" in e:
            print(f"  with prompt sharing (chosen + rejected in one call): {e['scorer_shared_seconds']} s, "
                  f"{e['speedup_shared']}x evaluate (target >= 5.0), {e['shared_over_unshared_scorer']}x the unshared "
                  f"scorer (max |score difference| on the subset {e['shared_max_abs_diff_on_subset']:.1e})")
    if "same_math" in result:
        d = result["same_math"]["max_rel_diff"]
        print(f"same math on one batch (loss, NLL, odds-ratio part; max relative difference): fast path with its "
              f"shortcuts off vs TRL {d['fast_exact_vs_trl']:.1e} (ok <= 1e-3: {result['same_math']['ok_1e-3']}); "
              f"as trained vs TRL {d['fast_vs_trl']:.1e}; TRL on our kernels vs TRL {d['trl_fast_kernels_vs_trl']:.1e} "
              f"(the bf16 effect of the kernel choice alone)")
        print(f"  prefix sharing vs TRL: {d['shared_exact_vs_trl']:.1e} (dense mask, other shortcuts off), "
              f"{d['shared_vs_trl']:.1e} as trained (varlen kernel, or FlexAttention); ok <= {result['same_math']['shared_tolerance']:.1e} "
              f"(1e-3 or TRL's own kernel effect, the larger): {result['same_math']['shared_ok']}; "
              f"vs TRL on our kernels {d['shared_vs_trl_fast_kernels']:.1e}")


# ----------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON result path (default: $OUT/orpo_speed.json or ./orpo_speed.json)")
    ap.add_argument("--work-dir", default="/tmp/orpo_speed", help="where the random model is saved")
    ap.add_argument("--train-pairs", type=int, default=1600)
    ap.add_argument("--warmup", type=int, default=10,
                    help="optimizer steps excluded from timing, the same for seed and fast (and variants)")
    ap.add_argument("--seed-steps", type=int, default=30, help="timed optimizer steps of the seed recipe")
    ap.add_argument("--fast-steps", type=int, default=40, help="timed optimizer steps of the fast path")
    ap.add_argument("--shared-steps", type=int, default=None, help="timed optimizer steps of the prefix-sharing run "
                    "(default: --fast-steps); it gets --warmup untimed steps too (FlexAttention compiles there)")
    ap.add_argument("--variant-steps", type=int, default=10, help="timed optimizer steps of each --variants entry")
    ap.add_argument("--variant-warmup", type=int, default=4, help="untimed steps of each variant (the model and its "
                    "kernels are warm by then; this covers the allocator growing to a new batch shape)")
    ap.add_argument("--t4-steps", type=int, default=2, help="steps of the t4 settings (peak memory only; after 1 "
                    "untimed step: the longest batch comes first under length grouping)")
    ap.add_argument("--eval-pairs", type=int, default=2000)
    ap.add_argument("--evaluate-subset", type=int, default=64, help="pairs ORPOTrainer.evaluate runs (extrapolated)")
    ap.add_argument("--scorer-budgets", default="", help="comma list of other max_batch_tokens at which the shared "
                    "scorer is timed again, e.g. 32768 (notebook 05 uses the default, 16384)")
    ap.add_argument("--variants", default="", help="extra fast-path variants on the same model, e.g. "
                    "'16:all:cudnn,8:20' = micro-batch:checkpointed-layers[:flags] (see `variant`)")
    ap.add_argument("--evaluate-batch-sizes", default="8,2", help="eval batch sizes ORPOTrainer.evaluate is timed at "
                    "(8: Trainer's default; 2: the seed recipe's); the faster one is the reference")
    ap.add_argument("--profile-steps", type=int, default=0, help="profile the fast run's last N steps (untimed)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: t4,seed,fast,shared,eval,"
                    "shared_eval (the scorer with prompt sharing), unshared_eval (the scorer without it)")
    ap.add_argument("--scoring-bound", metavar="RESULT_JSON", help="print the scoring speed-up bound for a saved "
                    "result (see `scoring_bound`) and exit; no GPU needed")
    ap.add_argument("--tiny", action="store_true", help="smoke test of the plumbing on a tiny model (CPU ok)")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    if a.scoring_bound:
        bound = scoring_bound(json.loads(Path(a.scoring_bound).read_text()))
        print(json.dumps(bound, indent=2))
        return bound

    cuda = torch.cuda.is_available()
    if not cuda and not a.tiny:
        sys.exit("orpo_speed.py needs a CUDA GPU (it trains a 7B-shaped model in 4-bit). "
                 "Use --tiny for a CPU smoke test of the plumbing; its numbers mean nothing.")
    device = "cuda" if cuda else "cpu"
    precision = "bf16" if cuda else "no"
    config = TINY if a.tiny else MISTRAL_7B
    if a.tiny:
        a.train_pairs, a.eval_pairs, a.evaluate_subset = min(a.train_pairs, 48), min(a.eval_pairs, 16), min(a.evaluate_subset, 8)
        a.seed_steps, a.fast_steps, a.t4_steps, a.warmup = min(a.seed_steps, 2), min(a.fast_steps, 2), 1, 1
        a.variant_steps, a.variant_warmup = min(a.variant_steps, 1), min(a.variant_warmup, 1)
        a.shared_steps = min(a.shared_steps or 2, 2)
    if a.shared_steps is None:
        a.shared_steps = a.fast_steps
    out_path = Path(a.out or os.path.join(os.environ.get("OUT", "."), "orpo_speed.json"))
    work = Path(a.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    import datasets

    datasets.disable_progress_bars()
    from engine.fast_orpo import pair_length
    from helpers.profiles import resolve_config

    # The fast path's config: the h100 profile, overridden only where a benchmark must.
    fast_overrides = benchmark_overrides(a.warmup + a.fast_steps + a.profile_steps)
    fast_cfg = resolve_config("h100", fast_overrides)
    log(f"fast = notebook 04's cells with cfg = resolve_config('h100', {fast_overrides}) "
        f"(benchmark overrides: run length; eval/save/logging cadence past the end)")
    # Pre-flight, before minutes of setup: notebook 04's LoRA and ORPOConfig cells must run on these versions.
    if "fast" not in skip:
        pre = {"cfg": fast_cfg, "precision": dict(PRECISION[device]),
               "run": __import__("helpers.rundir", fromlist=["RunDir"]).RunDir(work / "preflight")}
        for src in notebook_cells()[:2]:
            exec(compile(src, "<notebook 04 pre-flight>", "exec"), pre)
        log(f"pre-flight: notebook 04's LoraConfig and ORPOConfig cells ran (warmup_steps="
            f"{pre['training_args'].warmup_steps}, use_liger_kernel={pre['training_args'].use_liger_kernel})")
        del pre

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tiny": a.tiny,
              "gpu": torch.cuda.get_device_name() if cuda else None, "versions": versions(),
              "model": {k: config[k] for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "num_key_value_heads", "sliding_window",
                                               "rope_theta", "max_position_embeddings", "rms_norm_eps"]},
              "quantization": "bnb 4-bit nf4, double quant, compute dtype = training dtype; sdpa attention",
              "lora": {k: v for k, v in LORA.items() if k != "task_type"},
              "settings": {"seed": SEED, "t4": T4, "max_length": MAX_LENGTH,
                           "fast": {"source": f"{NOTEBOOK_04.relative_to(ROOT)}: the code cells containing "
                                              f"{list(CELL_MARKERS)}, exec'd verbatim",
                                    "profile": "h100", "benchmark_overrides": fast_overrides,
                                    "cfg": fast_cfg.to_dict()},
                           "variants_base": FAST, "liger_kernel_config_seed_t4_variants": LIGER_CONFIG},
              "runs": {}, "summary": {}, "args": vars(a)}

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))

    log(f"device {device} {result['gpu']}; versions {result['versions']}")
    result["matmul_ceiling_tflops"] = matmul_ceiling(device)
    log(f"bf16 matmul ceiling (TFLOP/s): {result['matmul_ceiling_tflops']}")
    tokenizer = build_tokenizer(config["vocab_size"])
    data = make_data(synthetic_pairs(a.train_pairs, config["vocab_size"], seed=0),
                     synthetic_pairs(a.eval_pairs, config["vocab_size"], seed=EVAL_SEED))
    columns = ["prompt", "chosen", "rejected"]
    train = data["train"].select_columns(columns)  # seed / t4 / variants train on what notebook 04 trains on
    evald = data["validation"].select_columns(columns)
    path = work / "model"
    secs = build_and_save_model(path, config, device, torch.bfloat16 if cuda else torch.float32, tokenizer)
    log(f"built + saved random model in {secs:.1f} s")
    result["setup_seconds"] = {"build_and_save": round(secs, 1)}

    # --- t4 settings first: liger (used by `fast`) patches transformers' Mistral classes for the whole process.
    if "t4" not in skip:
        t0 = time.perf_counter()
        model = load_4bit(path, torch.float16 if cuda else torch.float32, device)
        result["setup_seconds"]["load_4bit"] = round(time.perf_counter() - t0, 1)
        tr = make_trainer(T4, model, train, tokenizer, work / "t4", 1 + a.t4_steps,
                          "fp16" if cuda else "no", not cuda)
        r = run_training("t4", tr, 1)
        r["pairs_per_step"] = T4["per_device_train_batch_size"] * T4["gradient_accumulation_steps"]
        result["runs"]["t4_settings"] = r
        result["summary"]["t4_peak_allocated_gib"] = r["peak_allocated_gib"]
        del tr, model
        free()
        save()

    # --- seed recipe, then held-out evaluation speed on the same model (before liger patches anything).
    if "seed" not in skip:
        model = load_4bit(path, torch.bfloat16 if cuda else torch.float32, device)
        eval_sub = evald.select(range(a.evaluate_subset))
        tr = make_trainer(SEED, model, train, tokenizer, work / "seed", a.warmup + a.seed_steps, precision, not cuda,
                          eval_data=eval_sub)
        r = run_training("seed", tr, a.warmup)
        r["pairs_per_step"] = SEED["per_device_train_batch_size"] * SEED["gradient_accumulation_steps"]
        result["runs"]["seed"] = r
        result["summary"]["mean_pair_tokens_train"] = round(float(np.mean(
            [len(x["chosen_input_ids"]) + len(x["rejected_input_ids"]) for x in tr.train_dataset])), 1)
        result["summary"]["max_pair_length_train"] = max(pair_length(x) for x in tr.train_dataset)
        save()
        if "eval" not in skip:
            tr.model.save_pretrained(work / "seed_adapter")  # notebook 05 loads a saved adapter; weights don't matter
            scorer_model = load_like_notebook_05(path, work / "seed_adapter", device)
            result["eval"] = eval_speed(tr, evald, a.evaluate_subset, scorer_model, tokenizer,
                                        [int(b) for b in a.evaluate_batch_sizes.split(",")],
                                        share_prompt="shared_eval" not in skip,
                                        unshared="unshared_eval" not in skip,
                                        shared_budgets=[int(b) for b in a.scorer_budgets.split(",") if b])
            if not a.tiny:
                result["eval"]["bound"] = scoring_bound(result)
            log(f"eval: {result['eval']}")
            del scorer_model
            save()
        del tr, model
        free()

    # --- the fast path: notebook 04's own cells, then optional variants on the same model.
    if "fast" not in skip:
        model = load_4bit(path, torch.bfloat16 if cuda else torch.float32, device)
        ns = notebook_namespace(fast_cfg, device, work / "notebook_run", model, tokenizer, data)
        run_notebook_cells(ns)
        tr = instrument(ns["trainer"])
        result["settings"]["fast"]["as_built"] = {
            "trainer_class": type(tr).__name__, "checkpoint_layers": getattr(tr, "checkpoint_layers", None),
            "adaptive_checkpointing": getattr(tr, "adaptive_checkpointing", None),
            "checkpoint_reference_tokens": getattr(tr, "checkpoint_reference_tokens", None),
            "lora": {k: (sorted(v) if isinstance(v, set) else v) for k, v in ns["peft_config"].to_dict().items()
                     if k in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")},
            "args": {k: str(getattr(tr.args, k, None)) for k in (
                "per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
                "gradient_checkpointing_kwargs", "optim", "learning_rate", "lr_scheduler_type", "warmup_steps",
                "beta", "max_length", "bf16", "fp16", "use_liger_kernel", "liger_kernel_config",
                "train_sampling_strategy", "max_steps", "eval_strategy", "eval_steps", "save_steps",
                "logging_steps", "seed")}}
        log(f"fast as built by notebook 04's cells: {result['settings']['fast']['as_built']}")
        r = run_training("fast", tr, a.warmup, a.profile_steps)
        r["pairs_per_step"] = fast_cfg.per_device_train_batch_size * fast_cfg.gradient_accumulation_steps
        r["share_prompt"] = bool(tr.share_prompt)
        r["checkpoint_reference_tokens"] = getattr(tr, "checkpoint_reference_tokens", None)
        if tr.share_prompt:  # which attention kernel applied the packed mask ("auto" resolved on this machine)
            from engine.prefix_sharing import resolve_backend
            r["share_prompt_backend"] = resolve_backend(tr.share_prompt_backend, tr.accelerator.device)
        result["runs"]["fast"] = r
        result["same_math"] = same_math(tr)
        log(f"same math: {result['same_math']}")
        save()
        peft_model = tr.model
        as_built = dict(FAST, per_device_train_batch_size=tr.args.per_device_train_batch_size,
                        gradient_accumulation_steps=tr.args.gradient_accumulation_steps,
                        gradient_checkpointing=tr.args.gradient_checkpointing, optim=tr.args.optim,
                        checkpoint_layers=tr.checkpoint_layers, learning_rate=tr.args.learning_rate, beta=tr.args.beta,
                        train_sampling_strategy=getattr(tr.args, "train_sampling_strategy", None),
                        use_liger_kernel=bool(tr.args.use_liger_kernel), lora_dropout=ns["peft_config"].lora_dropout,
                        share_prompt=bool(tr.share_prompt), adaptive_checkpointing=tr.adaptive_checkpointing)
        del tr, ns
        free()
        fast = dict(FAST, use_liger_kernel=FAST["use_liger_kernel"] and cuda)
        # --- prefix sharing (issue #12): the fast run's settings as built with share_prompt switched, same model:
        # `shared` when notebook 04 trains without sharing, `unshared` when the profile already shares.
        if "shared" not in skip:
            other = "unshared" if as_built["share_prompt"] else "shared"
            kind = dict(as_built, share_prompt=not as_built["share_prompt"])
            vt = make_trainer(kind, peft_model, train, tokenizer, work / other, a.warmup + a.shared_steps,
                              precision, not cuda, peft=False)
            try:
                r = run_training(other, vt, a.warmup)
                r["pairs_per_step"] = kind["per_device_train_batch_size"] * kind["gradient_accumulation_steps"]
                r["settings"] = {k: str(v) for k, v in kind.items()}
                r["share_prompt"] = kind["share_prompt"]
                result["runs"][other] = r
            except torch.OutOfMemoryError as e:
                result["runs"][other] = {"error": f"OOM: {str(e)[:200]}", "settings": {k: str(v) for k, v in
                                                                                        kind.items()}}
                log(f"{other}: OOM")
            del vt
            free()
            save()
        for spec in filter(None, a.variants.split(",")):
            kind, name = variant(spec, fast)
            try:
                vt = make_trainer(kind, peft_model, train, tokenizer, work / name,
                                  a.variant_warmup + a.variant_steps, precision, not cuda, peft=False)
                r = run_training(name, vt, a.variant_warmup)
                r["pairs_per_step"] = kind["per_device_train_batch_size"] * kind["gradient_accumulation_steps"]
                r["settings"] = kind
                r["share_prompt"] = bool(kind.get("share_prompt"))
                result["runs"][name] = r
                del vt
            except torch.OutOfMemoryError as e:
                result["runs"][name] = {"error": f"OOM: {str(e)[:200]}", "settings": kind}
                log(f"{name}: OOM")
            free()
            save()

    runs = result["runs"]
    ceiling = max((result.get("matmul_ceiling_tflops") or {}).values(), default=None)
    for r in runs.values():
        r.update(ceiling_fraction(r, config, ceiling))
    ok = lambda name: name in runs and runs[name].get("tokens_per_s")  # noqa: E731
    if ok("seed") and ok("fast"):
        result["summary"]["speedup_fast_over_seed"] = round(runs["fast"]["tokens_per_s"] / runs["seed"]["tokens_per_s"], 2)
        result["summary"]["fast_peak_allocated_gib"] = runs["fast"]["peak_allocated_gib"]
    if ok("seed") and ok("shared"):
        result["summary"]["speedup_shared_over_seed"] = round(
            runs["shared"]["tokens_per_s"] / runs["seed"]["tokens_per_s"], 2)
        result["summary"]["shared_peak_allocated_gib"] = runs["shared"]["peak_allocated_gib"]
    if ok("fast") and ok("shared"):
        result["summary"]["speedup_shared_over_fast"] = round(
            runs["shared"]["tokens_per_s"] / runs["fast"]["tokens_per_s"], 2)
    if ok("fast") and ok("unshared"):  # the profile shares prompts: what sharing alone buys on notebook 04's path
        result["summary"]["speedup_fast_over_unshared"] = round(
            runs["fast"]["tokens_per_s"] / runs["unshared"]["tokens_per_s"], 2)
        result["summary"]["unshared_peak_allocated_gib"] = runs["unshared"]["peak_allocated_gib"]
    for name in [n for n in runs if ok(n) and ok("seed") and n not in ("seed", "fast", "shared", "unshared")]:
        result["summary"][f"speedup_{name}_over_seed"] = round(runs[name]["tokens_per_s"] / runs["seed"]["tokens_per_s"], 2)
    save()
    print_table(result)
    log(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
