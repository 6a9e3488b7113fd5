"""Model-side plumbing: memory report (notebook 03), checkpoints, progress and throughput (notebook 04)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback


def logical_parameter_count(model) -> int:
    """Parameters as the unquantized model has them (a packed 4-bit tensor stores two values per byte)."""
    total = 0
    for param in model.parameters():
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        total += int(torch.Size(shape).numel()) if shape is not None else param.numel()
    return total


def memory_report(model) -> dict:
    """Footprint of the loaded (4-bit) model against what the same weights take in 16 bits (notebook 03)."""
    params = logical_parameter_count(model)
    footprint = model.get_memory_footprint()
    return {"parameters": params,
            "footprint_4bit_MiB": round(footprint / 2**20, 2),
            "estimate_16bit_MiB": round(params * 2 / 2**20, 2),
            "saving_factor": round(params * 2 / footprint, 2)}


CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors")


def latest_valid_checkpoint(checkpoints_dir: Path) -> str | None:
    """The newest `checkpoint-N` folder that is complete (notebook 04 resumes from it).

    A process killed while saving leaves a folder without its trainer state or adapter weights, or with a
    state file that is not valid JSON: such a folder is skipped with a message instead of crashing the resume.
    """
    folders = sorted(Path(checkpoints_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]),
                     reverse=True) if Path(checkpoints_dir).exists() else []
    for folder in folders:
        if any(folder.glob("pytorch_model_fsdp*")):  # FSDP saves sharded model and optimizer states instead
            print(f"Not resuming from {folder.name}: an FSDP sharded checkpoint (no adapter file); resuming those is "
                  "not supported yet (README, Several GPUs), so training starts from step 0")
            continue
        missing = [f for f in CHECKPOINT_FILES if not (folder / f).exists()]
        try:
            if not missing:
                json.loads((folder / "trainer_state.json").read_text())
                return str(folder)
        except (json.JSONDecodeError, OSError):
            missing = ["a readable trainer_state.json"]
        print(f"Skipping incomplete checkpoint {folder.name} (missing {', '.join(missing)})")
    return None


def adapter_tensor_names(model) -> set[str]:
    """The tensor names a PeftModel's adapter file must hold: its trainable LoRA parameters, named as PEFT saves them
    (without the adapter name). Notebook 04 reads them before training, while no FSDP wrapper has flattened them."""
    adapter = getattr(model, "active_adapter", "default")
    return {name.replace(f".{adapter}.", ".") for name, param in model.named_parameters()
            if param.requires_grad and "lora_" in name}


def check_saved_adapter(adapter_dir: Path, expected: set[str]) -> int:
    """Fail loudly if the adapter notebook 04 just saved lacks LoRA weights the model trained (notebook 04, rank 0).

    A file can be written without any error and still miss tensors (under FSDP the gathered state dict can differ
    from the model's): notebook 05 would then evaluate the untrained base model, with only a warning. `expected`:
    `adapter_tensor_names(model)` taken before training. Returns the number of tensors saved.
    """
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    missing, empty = sorted(expected - set(saved)), sorted(k for k, shape in saved.items() if 0 in shape)
    if not expected or missing or empty:
        raise RuntimeError(
            f"The saved adapter {path.parent.name}/{path.name} is not the trained one: {len(saved)} tensors saved, "
            f"{len(expected)} trainable LoRA tensors in the model; missing {len(missing)} (e.g. {missing[:2]}), "
            f"empty {len(empty)} (e.g. {empty[:2]}); saved names e.g. {sorted(saved)[:2]}. Notebook 05 would "
            "evaluate the base model. Fix: with distributed=fsdp, train with distributed=ddp instead (FSDP's adapter "
            "saving is not verified on GPUs yet: README, Several GPUs); otherwise please report it with this message.")
    return len(saved)


class PlainProgress(TrainerCallback):
    """One plain-text line per log event: readable in Jupyter, papermill logs and CI (no widget spam)."""

    KEYS = ("loss", "nll_loss", "rewards/margins", "rewards/accuracies", "eval_loss", "eval_rewards/accuracies")

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = "  ".join(f"{k}={logs[k]:.4g}" for k in self.KEYS if k in (logs or {}))
        if shown:
            print(f"step {state.global_step:>5}/{state.max_steps}  {shown}", flush=True)


class Throughput(TrainerCallback):
    """Training tokens/s (real tokens of prompt+chosen and prompt+rejected) and peak GPU memory.

    `tokens_per_second_approx` counts the whole training call (start-up, evaluations and saves included);
    `steady_tokens_per_second` only the steps after the first `warmup` (kernels picked, memory pools grown), which is
    what benchmarks compare. Pairs per optimizer step are read from the trainer itself when training starts
    (micro-batch x accumulation x processes), so the count is what ran, not what was meant to run.
    """

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
        seconds = time.perf_counter() - self.start
        steps = state.global_step - self.start_step
        skip = min(self.warmup, len(self.step_ends) // 3)
        timed = self.step_ends[skip:]
        steady = (self.tokens_per_step * (len(timed) - 1) / (timed[-1] - timed[0])) if len(timed) > 1 else None
        self.summary = {"steps": steps, "train_seconds": round(seconds, 1), "pairs_per_step": self.pairs_per_step,
                        "seconds_per_step": round(seconds / max(steps, 1), 3),
                        "tokens_per_second_approx": round(self.tokens_per_step * steps / max(seconds, 1e-9), 1),
                        "steady_tokens_per_second": round(steady, 1) if steady else None,
                        "steady_steps_timed": max(len(timed) - 1, 0),
                        "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                        if torch.cuda.is_available() else None}


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
