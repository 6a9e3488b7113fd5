"""Rehearsing the GPU profiles' code paths on a CPU (tests/test_gpu_paths_on_cpu.py, test_distributed.py, CI)."""

from helpers.profiles import PROFILES

# Every profile field is one of two kinds. TRAINER_PATH fields choose *which code runs* in notebook 04 (trainer
# class, sampler, checkpointing, batch layout, schedule); HARDWARE_SIZED fields only size the run to the machine.
# tests/test_gpu_paths_on_cpu.py runs every GPU profile's TRAINER_PATH settings end to end on a CPU
# (`cpu_rehearsal`), and tests/test_profiles.py fails if a profile sets a field that is in neither tuple: a new
# GPU-only setting cannot escape CI.
TRAINER_PATH = ("fast_orpo_trainer", "gradient_checkpointing", "checkpoint_layers", "adaptive_checkpointing",
                "use_liger_kernel", "share_prompt",
                "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio",
                "eval_batch_size", "optim")
HARDWARE_SIZED = ("num_processes", "distributed", "model_id", "dataset_id", "n_train", "n_validation", "n_eval",
                  "max_length", "learning_rate", "max_steps", "eval_steps", "logging_steps", "save_steps", "max_new_tokens", "n_generation_examples",
                  "ifeval_batch_size")


def cpu_rehearsal(profile: str, *, max_steps: int = 12, every: int = 4, decoder_layers: int = 2) -> dict:
    """Overrides that run `profile`'s training code path on the tiny offline default on a CPU (tests, CI).

    Trainer-path settings come from the profile unchanged, except `checkpoint_layers`, which is capped below the
    tiny model's `decoder_layers` so that *selective* checkpointing (some layers, not all) really runs. Only CUDA
    kernels are left out (Liger, flash attention, paged 8-bit AdamW): notebook 04 falls back to their CPU forms.
    Evaluation, checkpoint saves and logging happen every `every` steps, so a short run evaluates several times.
    """
    settings = {name: value for name, value in PROFILES[profile].items() if name in TRAINER_PATH}
    if settings.get("checkpoint_layers", -1) >= decoder_layers:
        settings["checkpoint_layers"] = decoder_layers - 1
    return {**settings, "max_steps": max_steps, "eval_steps": every, "save_steps": every, "logging_steps": every,
            "n_train": 200, "n_validation": 32, "n_eval": 60}
