"""Model-side plumbing: where the model goes and its memory (notebooks 03-05); optimizer choice, one GPU per process,
checkpoints, progress, throughput and out-of-memory advice (notebook 04); a merged model's agreement (notebook 05)."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback


def device_map_for(precision: dict) -> dict | None:
    """`device_map` (notebooks 03-05): the 4-bit model on this process's GPU, never "auto"; None on CPU and FSDP."""
    if precision["device"] != "cuda" or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return None
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def auto_optimizer(device: str) -> str:
    """Notebook 04's `optim="auto"`: paged 8-bit AdamW on one GPU, else torch's AdamW (docs/design-decisions.md)."""
    several = int(os.environ.get("WORLD_SIZE", 1)) > 1
    return "adamw_torch" if device == "cpu" or several else "paged_adamw_8bit"


def use_one_gpu(training_args) -> None:
    """Notebook 04: a process trains on ONE GPU, even among several (DataParallel cannot replicate a 4-bit model)."""
    _ = training_args.device  # sets up devices (and n_gpu) now, so nothing resets what follows
    if int(os.environ.get("WORLD_SIZE", 1)) == 1 and training_args.n_gpu > 1:
        training_args._n_gpu = 1


def logical_parameter_count(model) -> int:
    """Parameters as the unquantized model has them (a packed 4-bit tensor stores two values per byte)."""
    total = 0
    for param in model.parameters():
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        total += int(torch.Size(shape).numel()) if shape is not None else param.numel()
    return total


def memory_report(model) -> dict:
    """Footprint of the loaded (4-bit) model against what the same weights take in 16 bits (notebook 03)."""
    params, footprint = logical_parameter_count(model), model.get_memory_footprint()
    return {"parameters": params, "footprint_4bit_MiB": round(footprint / 2**20, 2),
            "estimate_16bit_MiB": round(params * 2 / 2**20, 2), "saving_factor": round(params * 2 / footprint, 2)}


def merge_agreement(logps: tuple[list, list], evaluated: tuple[list, list]) -> dict:
    """Notebook 05: how a merged model's held-out log-probs follow the evaluated model's (same preference, max gap)."""
    (c, r), (ec, er) = logps, evaluated
    same = sum((a > b) == (x > y) for a, b, x, y in zip(c, r, ec, er, strict=True)) / len(c)
    return {"same_preference_share": same, "max_abs_logp_gap": max(abs(a - b) for a, b in zip(c + r, ec + er))}


def latest_valid_checkpoint(checkpoints_dir: Path) -> str | None:
    """Notebook 04 resumes from the newest complete `checkpoint-N` folder; half-written ones are skipped, said so."""
    folders = sorted(Path(checkpoints_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]),
                     reverse=True) if Path(checkpoints_dir).exists() else []
    for folder in folders:
        if any(folder.glob("pytorch_model_fsdp*")):  # FSDP saves sharded model and optimizer states instead
            print(f"Not resuming from {folder.name}: an FSDP sharded checkpoint (no adapter file); resuming those is "
                  "not supported yet (docs/multi-gpu.md), so training starts from step 0")
            continue
        missing = [f for f in ("trainer_state.json", "adapter_model.safetensors") if not (folder / f).exists()]
        try:
            if not missing:
                json.loads((folder / "trainer_state.json").read_text())
                return str(folder)
        except (json.JSONDecodeError, OSError):
            missing = ["a readable trainer_state.json"]
        print(f"Skipping incomplete checkpoint {folder.name} (missing {', '.join(missing)})")
    return None


class PlainProgress(TrainerCallback):
    """One plain-text line per log event: readable in Jupyter, papermill logs and CI (no widget spam)."""
    KEYS = ("loss", "nll_loss", "rewards/margins", "rewards/accuracies", "eval_loss", "eval_rewards/accuracies")

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = "  ".join(f"{k}={logs[k]:.4g}" for k in self.KEYS if k in (logs or {}))
        if shown:
            print(f"step {state.global_step:>5}/{state.max_steps}  {shown}", flush=True)


class Throughput(TrainerCallback):
    """Notebook 04: training tokens/s (real tokens of prompt+chosen and prompt+rejected) and peak GPU memory; the
    steady rate leaves out the first `warmup` steps (docs/design-decisions.md)."""

    def __init__(self, tokens_per_pair: float, warmup: int = 5):
        self.tokens_per_pair, self.warmup = tokens_per_pair, warmup
        self.summary: dict = {}
        self.step_ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.pairs_per_step = state.train_batch_size * args.gradient_accumulation_steps * args.world_size
        self.tokens_per_step = self.tokens_per_pair * self.pairs_per_step
        self.start, self.start_step = time.perf_counter(), state.global_step
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        seconds, steps = time.perf_counter() - self.start, state.global_step - self.start_step
        timed = self.step_ends[min(self.warmup, len(self.step_ends) // 3):]  # the steps after the warm-up
        steady = (self.tokens_per_step * (len(timed) - 1) / (timed[-1] - timed[0])) if len(timed) > 1 else None
        cuda = torch.cuda.is_available()
        self.summary = {"steps": steps, "train_seconds": round(seconds, 1), "pairs_per_step": self.pairs_per_step,
                        "seconds_per_step": round(seconds / max(steps, 1), 3),
                        "tokens_per_second_approx": round(self.tokens_per_step * steps / max(seconds, 1e-9), 1),
                        "steady_tokens_per_second": round(steady, 1) if steady else None,
                        "steady_steps_timed": max(len(timed) - 1, 0),
                        "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                        # and what torch's cache held (fragmentation):
                        "peak_gpu_reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None}


@contextmanager
def explain_out_of_memory(cfg):
    """Notebook 04: turn a CUDA out-of-memory crash into concrete advice (checkpoints already saved stay)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        selective = cfg.fast_orpo_trainer and cfg.gradient_checkpointing and cfg.checkpoint_layers >= 0
        more_layers = (f"checkpoint more layers (checkpoint_layers {cfg.checkpoint_layers} was sized on shorter pairs "
                       f"than yours, maybe: -p checkpoint_layers {cfg.checkpoint_layers + 4}, or -1 for all); "
                       if selective else "")
        raise RuntimeError(
            f"GPU out of memory (micro-batch {cfg.per_device_train_batch_size}, max_length {cfg.max_length}, "
            f"gradient_checkpointing {cfg.gradient_checkpointing}). Fix, cheapest first: {more_layers}halve "
            "per_device_train_batch_size and double gradient_accumulation_steps (same effective batch); set "
            "gradient_checkpointing True; lower max_length (02 then drops more long pairs); restart the kernel "
            "to free memory. Rerunning the same run resumes from its last checkpoint.") from err
