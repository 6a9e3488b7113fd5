"""Hardware probes and the dtype / attention decisions (notebook 01; its manifest is read by 03 and 04).
The decision is a pure function of what the probes found, so tests can fake any GPU."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import asdict, dataclass

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers",
             "papermill", "nbval", "matplotlib", "flash-attn")
ASSUME_CC_ENV = "ORPO_ASSUME_COMPUTE_CAPABILITY"  # e.g. "7.5": rehearse the T4 decisions on a newer GPU


@dataclass(frozen=True)
class Hardware:
    """What notebook 01 found. `compute_capability` is None on a machine without a CUDA GPU."""
    device_name: str
    compute_capability: tuple[int, int] | None
    total_memory_gib: float | None
    flash_attn_importable: bool


@dataclass(frozen=True)
class Precision:
    """The dtype / attention choices, with the reason for each (written to environment.json)."""
    device: str                   # "cuda" or "cpu"
    torch_dtype: str              # dtype the non-quantized parts of the model are loaded in
    bnb_4bit_compute_dtype: str   # dtype the 4-bit matmuls dequantize to
    attn_implementation: str      # "flash_attention_2" or "sdpa"
    use_bf16: bool                # -> ORPOConfig(bf16=...)
    use_fp16: bool                # -> ORPOConfig(fp16=...)
    reasons: dict


def installed_version(name: str) -> str | None:
    """A distribution's installed version (None if missing), from package metadata: nothing heavy is imported."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Python's version and the installed versions of LIBRARIES (None if missing)."""
    return {"python": platform.python_version(), **{name: installed_version(name) for name in LIBRARIES}}


def probe_hardware() -> Hardware:
    """Look at the real machine (notebook 01 and the runner; everything else reads the manifest). ASSUME_CC_ENV can
    lower (never raise) the capability a GPU reports, to rehearse the T4 path; the device name then says so."""
    import torch
    flash = importlib.util.find_spec("flash_attn") is not None
    if not torch.cuda.is_available():
        return Hardware(platform.processor() or platform.machine(), None, None, flash)
    props = torch.cuda.get_device_properties(0)
    cc, name = tuple(torch.cuda.get_device_capability(0)), props.name
    assumed = os.environ.get(ASSUME_CC_ENV)
    if assumed:
        wanted = tuple(int(x) for x in assumed.split("."))
        if wanted < cc:
            cc, name = wanted, f"{name} (behaving as compute capability {assumed}: {ASSUME_CC_ENV})"
    return Hardware(name, cc, round(props.total_memory / 2**30, 1), flash)


def decide_precision(hw: Hardware) -> Precision:
    """bf16, and FlashAttention-2 if installed, only on compute capability >= 8 (not `is_bf16_supported()`)."""
    cc = hw.compute_capability
    if cc is None:
        return Precision("cpu", "float32", "float32", "sdpa", False, False, {
            "dtype": "no CUDA GPU: float32 (bf16 autocast on a CPU without bf16 units ran ~10x slower here)",
            "compute_dtype": "float32: bitsandbytes' CPU 4-bit kernels ran ~6x slower with bfloat16, same results",
            "attention": "sdpa: PyTorch's built-in attention, runs everywhere"})
    if cc[0] >= 8:
        attn = "flash_attention_2" if hw.flash_attn_importable else "sdpa"
        why_attn = ("flash_attn is installed and the GPU is Ampere or newer" if hw.flash_attn_importable else
                    "flash_attn is not installed (never build it inside a notebook): sdpa is the fast built-in")
        return Precision("cuda", "bfloat16", "bfloat16", attn, True, False, {
            "dtype": f"compute capability {cc[0]}.{cc[1]} >= 8: native bf16, fp32's range without loss scaling",
            "compute_dtype": "bfloat16, matching the model (the float32 default is silently slow)",
            "attention": why_attn})
    return Precision("cuda", "float16", "float16", "sdpa", False, True, {
        "dtype": f"compute capability {cc[0]}.{cc[1]} < 8: no native bf16, so fp16 with loss scaling",
        "compute_dtype": "float16, matching the model",
        "attention": "sdpa: FlashAttention-2 needs compute capability >= 8"})


def environment_manifest(hw: Hardware, precision: Precision) -> dict:
    """The content of environment.json (notebook 01 writes it; 03 and 04 load their dtypes from it)."""
    return {"versions": library_versions(), "platform": platform.platform(), "python_executable_name":
            sys.executable.rsplit("/", 1)[-1], "hardware": asdict(hw), "precision": asdict(precision)}
