"""Profiles and parameters: one `profile` picks sensible defaults, every other parameter can override them. Used by
every notebook (through `rundir.open_run`) and the runner, which validates them before anything expensive starts."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields

from offline_default import OFFLINE_DATASET_ID, OFFLINE_MODEL_ID

MISTRAL_7B = "mistralai/Mistral-7B-v0.1"
ULTRAFEEDBACK = "HuggingFaceH4/ultrafeedback_binarized"


class ParameterError(ValueError):
    """A parameter is wrong. The message names the parameter, the value and the fix."""


@dataclass
class RunConfig:
    """Everything one run of the series needs. Notebooks read it from `params.json` in the run directory."""
    # ---- run -----------------------------------------------------------------------------------------
    run_name: str = "tiny-demo"
    profile: str = "tiny"
    seed: int = 0                               # one seed: offline-default build, sampling, LoRA init, training
    # ---- model & data (notebooks 02, 03) -------------------------------------------------------------
    model_id: str = OFFLINE_MODEL_ID            # Hub id, local folder, or the offline default
    dataset_id: str = OFFLINE_DATASET_ID        # Hub id, local file/folder, or the offline default
    train_split: str = "train_prefs"
    eval_split: str = "test_prefs"              # split name or second file; "" or a missing split: carve from train
    prompt_column: str = ""                     # "" = auto ('prompt', else 'question'); else the prompt's column
    system_column: str = ""                     # "" = auto ('system' if present); else the system prompt's column
    test_share: float = 0.1                     # share of prompts carved out as the test set if there is no test source
    n_train: int = 1000                         # pairs kept for training after length filtering
    n_validation: int = 100                     # pairs carved from train (by prompt) for the in-training eval in 04
    n_eval: int = 150                           # held-out test pairs: notebook 05's before/after
    max_length: int = 128                       # prompt + longer answer, in tokens; longer pairs are dropped
    trust_remote_code: bool = False             # never run a model repo's own code unless you ask
    # ---- LoRA (notebook 04) --------------------------------------------------------------------------
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # ---- ORPO (notebook 04) --------------------------------------------------------------------------
    learning_rate: float = 3e-3
    beta: float = 0.1
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = 800                        # -1 = run num_train_epochs
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "linear"
    optim: str = "auto"                         # auto (paged 8-bit AdamW on 1 GPU, else torch's) or one of OPTIMIZERS
    gradient_checkpointing: bool = False
    # ---- GPU speed (notebook 04; measured in benchmarks/orpo_speed.py) -------------------------------------
    fast_orpo_trainer: bool = False             # engine.fast_orpo.FastORPOTrainer: same loss, chunked logits
    checkpoint_layers: int = -1                 # with the fast trainer: checkpoint only the first k layers; -1 = all
    adaptive_checkpointing: bool = True         # k is for the longest batch; shorter ones checkpoint fewer (1 process)
    use_liger_kernel: bool = False              # Liger's Triton RMSNorm/SwiGLU/RoPE kernels (GPU, if installed)
    share_prompt: bool = False                  # with the fast trainer: each prompt computed once for both answers
    num_processes: int = 1                      # > 1: that many processes (accelerate launch); "auto": every GPU
    distributed: str = "ddp"                    # num_processes > 1: "ddp" (4-bit copy per GPU) or "fsdp" (sharded)
    eval_steps: int = 100
    logging_steps: int = 20
    save_steps: int = 100
    report_to: str = "none"                     # "tensorboard": also log to outputs/tensorboard/<group>/<run>
    # ---- evaluation (notebook 05) --------------------------------------------------------------------
    eval_batch_size: int = 64
    max_new_tokens: int = 16
    n_generation_examples: int = 6
    merge_adapter: bool = False
    ifeval: bool = False                        # lm-evaluation-harness' IFEval, base vs tuned (needs the Hub)
    ifeval_limit: int = 0                       # 0 = all 541 prompts; N = the first N (a quick, rough look)
    ifeval_batch_size: int = 8                  # prompts generated together (up to 1,280 new tokens each)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Only the fields that differ from RunConfig's defaults (which ARE the `tiny` profile).
_GPU_COMMON = dict(model_id=MISTRAL_7B, dataset_id=ULTRAFEEDBACK, max_length=1024, learning_rate=5e-5,
                   lr_scheduler_type="cosine", warmup_ratio=0.1, max_steps=-1, eval_steps=100, logging_steps=10,
                   save_steps=100, eval_batch_size=8, max_new_tokens=128, n_generation_examples=4,
                   gradient_checkpointing=True, fast_orpo_trainer=True, n_validation=200)
# Batch sizes, checkpointing and optimizer per GPU: how h100's were measured is in engine/README.md ("How the h100
# profile was sized"); t4 needs ~8 GiB of a 16 GB card, a100 (not measured) ~19 GiB with full checkpointing.
PROFILES: dict[str, dict] = {
    "tiny": {},
    "t4": {**_GPU_COMMON, "n_train": 1000, "n_eval": 200, "ifeval_batch_size": 16,
           "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4},
    "a100": {**_GPU_COMMON, "n_train": 5000, "n_eval": 500, "use_liger_kernel": True, "ifeval_batch_size": 32,
             "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1},
    "h100": {**_GPU_COMMON, "n_train": 10000, "n_eval": 2000, "use_liger_kernel": True, "share_prompt": True,
             "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "checkpoint_layers": 22,
             "optim": "adamw_torch_fused", "ifeval_batch_size": 64},
}
GPU_PROFILES = ("t4", "a100", "h100")


def choose_profile(compute_capability: tuple[int, int] | None) -> tuple[str, str]:
    """`profile="auto"`: pick a profile from the hardware and say why (notebook 01, runner)."""
    if compute_capability is None:
        return "tiny", "no CUDA GPU found: the CPU-sized offline default is the only thing that runs in minutes"
    major, minor = compute_capability
    if major >= 9:
        return "h100", f"compute capability {major}.{minor} (Hopper or newer): bf16, large batches"
    if major >= 8:
        return "a100", f"compute capability {major}.{minor} (Ampere/Ada): bf16"
    return "t4", f"compute capability {major}.{minor} (pre-Ampere, e.g. T4): no real bf16, so fp16 and small batches"


_POSITIVE = ("n_train", "n_validation", "n_eval", "lora_r", "lora_alpha", "learning_rate", "beta",
             "per_device_train_batch_size", "gradient_accumulation_steps", "eval_steps", "logging_steps",
             "save_steps", "eval_batch_size", "max_new_tokens", "ifeval_batch_size")
_MIN_MAX_LENGTH = 16  # below this no prompt + answer fits, not even the offline default's
# `optim` values notebook 04 accepts ("auto" is resolved there, from the device and the number of processes)
OPTIMIZERS = ("auto", "paged_adamw_8bit", "adamw_8bit", "adamw_torch", "adamw_torch_fused")
FSDP_NEEDS_GPUS = ("Parameter `distributed` = 'fsdp' with num_processes > 1 needs GPUs: accelerate's FSDP has no CPU "
                   "backend (it stops with 'no available devices' after the model is loaded). Fix: `-p distributed "
                   "ddp` (on a CPU, N gloo processes rehearse the multi-GPU path) or `-p num_processes 1`.")


def _from_text(value: str, expected: type):
    """Text (`-p beta 0.2`, YAML's `1e-3`, `true`) read as `expected` as papermill does; else unchanged."""
    text = value.strip()
    if expected is bool:  # true / false in any case; "yes"/"1" stay errors: too easy to mistype
        return {"true": True, "false": False}.get(text.lower(), value)
    try:
        return expected(text) if expected in (int, float) else value
    except ValueError:
        return value


def _check_type(name: str, value, expected: type):
    if isinstance(value, str) and expected is not str:
        value = _from_text(value, expected)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)  # `-p n_train 2e3` or a YAML `1000.0`: a whole number is a whole number
    if expected is bool and not isinstance(value, bool) or expected is not bool and isinstance(value, bool):
        raise ParameterError(f"Parameter `{name}` must be {expected.__name__}, got {value!r}. Fix: pass e.g. "
                             f"`-p {name} {getattr(RunConfig, name)!r}`.")
    if not isinstance(value, expected):
        raise ParameterError(f"Parameter `{name}` must be {expected.__name__}, got {type(value).__name__} "
                             f"{value!r}. Fix: pass a {expected.__name__}, e.g. `{name}={getattr(RunConfig, name)!r}`.")
    return value


def resolve_config(profile: str = "tiny", overrides: dict | None = None, *, has_gpu: bool | None = None,
                   compute_capability: tuple[int, int] | None = None) -> RunConfig:
    """Profile defaults + overrides (None: the default), validated (ParameterError); `has_gpu` checked if given."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if profile == "auto":
        profile, why = choose_profile(compute_capability)
        print(f"profile='auto' chose {profile!r}: {why}")
    if profile not in PROFILES:
        raise ParameterError(f"Unknown profile {profile!r}. Fix: use one of {sorted(PROFILES) + ['auto']}.")
    types = {f.name: f.type for f in fields(RunConfig)}
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        raise ParameterError(f"Unknown parameter(s) {unknown}. Fix: check the spelling; known parameters are "
                             f"{sorted(types)}.")
    if profile in GPU_PROFILES and has_gpu is False:
        raise ParameterError(f"Profile {profile!r} needs a CUDA GPU and none was found. Fix: use `profile=tiny` "
                             "(runs on any CPU) or `profile=auto`, or run on a GPU machine.")
    for name, value in overrides.items():  # a pasted token must never reach params.json or a log
        if isinstance(value, str) and re.search(r"hf_[A-Za-z0-9]{20,}", value):
            raise ParameterError(f"Parameter `{name}` looks like a Hugging Face token. Never pass a token as a "
                                 "parameter: set HF_TOKEN in the environment or run `huggingface-cli login`.")
    values = {**PROFILES[profile], **overrides, "profile": profile}
    for name, value in values.items():
        if name == "num_processes" and isinstance(value, str) and value.strip().lower() == "auto":
            values[name] = "auto"  # the one parameter that takes a word or a number: resolved by notebook 04
            continue
        try:
            expected = {"str": str, "int": int, "float": float, "bool": bool}[types[name]]
            values[name] = _check_type(name, value, expected)
        except ParameterError:
            if name != "num_processes":
                raise
            raise ParameterError(f"Parameter `num_processes` must be a whole number or 'auto', got {value!r}. Fix: "
                                 "`-p num_processes auto` (every visible GPU) or e.g. `-p num_processes 2`.") from None
    cfg = RunConfig(**values)
    _check_ranges(cfg)
    if has_gpu is False and cfg.distributed == "fsdp" and cfg.num_processes not in (1, "auto"):
        raise ParameterError(FSDP_NEEDS_GPUS)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    for name in _POSITIVE:
        value = getattr(cfg, name)
        if not (value > 0) or (isinstance(value, float) and not math.isfinite(value)):
            default = PROFILES[cfg.profile].get(name, getattr(RunConfig, name))
            raise ParameterError(f"Parameter `{name}` must be > 0, got {value!r}. Fix: pass a positive value "
                                 f"(the `{cfg.profile}` profile uses {default!r}).")
    rules = [  # (what must hold, the error when it does not), checked in this order
        (cfg.max_length >= _MIN_MAX_LENGTH, f"Parameter `max_length` = {cfg.max_length} is too small for any prompt "
         f"+ answer. Fix: use at least {_MIN_MAX_LENGTH} (tiny uses 128, GPU profiles 1024)."),
        (0.0 <= cfg.lora_dropout < 1.0,
         f"Parameter `lora_dropout` must be in [0, 1), got {cfg.lora_dropout}. Fix: e.g. 0.05."),
        (0.0 < cfg.test_share < 1.0, f"Parameter `test_share` must be in (0, 1), got {cfg.test_share}. Fix: e.g. 0.1 "
         "(10% of the prompts become the held-out test set when the data has no test split)."),
        (0.0 <= cfg.warmup_ratio < 1.0,
         f"Parameter `warmup_ratio` must be in [0, 1), got {cfg.warmup_ratio}. Fix: e.g. 0.1."),
        (cfg.num_processes == "auto" or cfg.num_processes >= 1, "Parameter `num_processes` must be >= 1 or 'auto', "
         f"got {cfg.num_processes!r}. Fix: `-p num_processes auto` (every visible GPU) or e.g. `-p num_processes 2`."),
        (cfg.distributed in ("ddp", "fsdp"), "Parameter `distributed` must be 'ddp' or 'fsdp', got "
         f"{cfg.distributed!r}. Fix: `-p distributed ddp` (a full 4-bit copy per GPU, fastest) or `fsdp` (shards "
         "the model)."),
        (cfg.report_to in ("none", "tensorboard"), "Parameter `report_to` must be 'none' or 'tensorboard', got "
         f"{cfg.report_to!r}. Fix: `-p report_to tensorboard` (metrics.jsonl is written either way)."),
        (cfg.ifeval_limit >= 0,
         f"Parameter `ifeval_limit` must be 0 (all prompts) or > 0, got {cfg.ifeval_limit}."),
        (cfg.optim in OPTIMIZERS, f"Parameter `optim` must be one of {list(OPTIMIZERS)}, got {cfg.optim!r}. Fix: e.g. "
         "`-p optim auto` (paged 8-bit AdamW on one GPU) or `-p optim adamw_torch_fused`."),
        (cfg.fast_orpo_trainer or not cfg.share_prompt, "Parameter `share_prompt` needs the fast trainer (TRL's own "
         "ORPOTrainer computes every prompt twice). Fix: add `-p fast_orpo_trainer true`, or drop `share_prompt`."),
        (cfg.checkpoint_layers >= -1, "Parameter `checkpoint_layers` must be -1 (all layers) or >= 0, got "
         f"{cfg.checkpoint_layers}. Fix: e.g. `-p checkpoint_layers 20`."),
        (cfg.max_steps == -1 or cfg.max_steps > 0, "Parameter `max_steps` must be -1 (use num_train_epochs) or > 0, "
         f"got {cfg.max_steps}. Fix: e.g. `-p max_steps 200`."),
        (cfg.max_steps != -1 or cfg.num_train_epochs > 0, "Parameter `num_train_epochs` must be > 0 when max_steps "
         f"is -1, got {cfg.num_train_epochs}. Fix: e.g. `-p num_train_epochs 1`."),
        (cfg.run_name and not any(c in cfg.run_name for c in "/\\") and not cfg.run_name.startswith("."),
         f"Parameter `run_name` = {cfg.run_name!r} must be a plain folder name. Fix: e.g. `-p run_name my-first-run`."),
    ]
    for holds, error in rules:
        if not holds:
            raise ParameterError(error)


def values_table(cfg: RunConfig, names: list[str] | tuple[str, ...], columns: int = 3) -> str:
    """The aligned table of values every notebook prints after opening the run; `*` marks an override of the profile."""
    defaults = resolve_config(cfg.profile)
    cells = [f"{name}{'*' if getattr(cfg, name) != getattr(defaults, name) else ''} = {getattr(cfg, name)!r}"
             for name in names]
    width = max(map(len, cells)) + 2
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    return "\n".join("".join(cell.ljust(width) for cell in row).rstrip() for row in rows)
