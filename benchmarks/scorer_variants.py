"""Where notebook 05's held-out scorer spends its time, on the Mistral-7B-shaped model (GPU; minutes).

`orpo_speed.py` measures the scorer against `Trainer.evaluate`; this script asks why it runs at ~2x the matmul floor.
It loads the random Mistral-7B-shaped model and a LoRA adapter exactly as notebook 05 does (4-bit base,
`PeftModel.from_pretrained`), then times `helpers.scoring.mean_answer_logps(..., share_prompt=True)` on the same
held-out pairs under a few changes, each alone:

  as_notebook_05   the call notebook 05 made when this was measured (2026-11-26), without Liger's kernels
  liger            Liger's RMSNorm / SwiGLU / RoPE kernels on the model, as notebook 04 trains with (h100 profile);
                   1.19x faster on an H100, so notebook 05 now applies them where the profile trains with them
  lora_bf16        the adapter's weights in bf16 (PEFT loads them in fp32)
  adapter_off      the base model alone (what LoRA costs)
  budget_32k       max_batch_tokens=32768 (rows twice as long)

and prints kernel profiles (grouped by input shape) of the call on 60 pairs, without and with Liger's kernels. Scores must stay within bf16 noise of the first.

    python3 benchmarks/scorer_variants.py --pairs 600 --out $OUT/scorer_variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orpo_speed as bench  # noqa: E402  (the benchmark's model, tokenizer, pairs and loading code)


def timed(fn) -> tuple[float, list[float]]:
    bench.sync()
    t0 = time.perf_counter()
    out = fn()
    bench.sync()
    return time.perf_counter() - t0, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--work-dir", default="/tmp/scorer_variants")
    ap.add_argument("--out", default=None)
    ap.add_argument("--tiny", action="store_true", help="plumbing check on a tiny model (CPU ok)")
    a = ap.parse_args(argv)
    from peft import LoraConfig, get_peft_model

    from helpers.scoring import mean_answer_logps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = dict(bench.MISTRAL_7B)
    if a.tiny:
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=512)
    work = Path(a.work_dir)
    tokenizer = bench.build_tokenizer(config["vocab_size"])
    bench.build_and_save_model(work / "model", config, device, dtype, tokenizer)
    base = bench.load_4bit(work / "model", dtype, device)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trained = get_peft_model(base, lora)
    for name, p in trained.named_parameters():  # a trained adapter has B != 0: make the update real
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)
    trained.save_pretrained(work / "adapter")
    del trained, base
    bench.free()
    model = bench.load_like_notebook_05(work / "model", work / "adapter", device, liger=False)

    rows = bench.synthetic_pairs(a.pairs, config["vocab_size"], seed=bench.EVAL_SEED)
    prompts = [r["prompt"] for r in rows]
    both = ([*prompts, *prompts], [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    score = lambda **kw: mean_answer_logps(model, tokenizer, *both, share_prompt=True, **kw)  # noqa: E731
    score()  # warm-up: kernels load, the allocator grows
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "pairs": a.pairs,
              "versions": bench.versions(), "variants": {}}
    reference = None

    def record(name, seconds, scores):
        nonlocal reference
        reference = scores if reference is None else reference
        result["variants"][name] = {"seconds": round(seconds, 2), "pairs_per_s": round(a.pairs / seconds, 1),
                                    "max_abs_diff_vs_notebook": float(np.max(np.abs(np.subtract(scores,
                                                                                                reference))))}
        bench.log(f"{name}: {result['variants'][name]}")

    few = ([*prompts[:60], *prompts[:60]], [r["chosen"] for r in rows[:60]] + [r["rejected"] for r in rows[:60]])

    def profile(key):  # a kernel profile of the shared scorer on 60 pairs (GPU only)
        if device != "cuda":
            return
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA], record_shapes=True) as prof:
            wall, _ = timed(lambda: mean_answer_logps(model, tokenizer, *few, share_prompt=True))
        result[key] = bench.summarize_profile(prof, wall, 1, top=30)
        for row in result[key]["top_gpu_self_ms_by_shape"]:
            print(f"  {row[2]:>9.1f} ms  {row[3]:>6}x  {row[0]}  {row[1]}")

    record("as_notebook_05", *timed(score))
    profile("profile_as_notebook_05_60_pairs")
    record("budget_32k", *timed(lambda: score(max_batch_tokens=32768)))
    with model.disable_adapter():
        seconds, _ = timed(score)
    result["variants"]["adapter_off"] = {"seconds": round(seconds, 2), "pairs_per_s": round(a.pairs / seconds, 1)}
    bench.log(f"adapter_off: {result['variants']['adapter_off']}")

    lora_params = [p for n, p in model.named_parameters() if "lora_" in n]
    dtypes = sorted({str(p.dtype) for p in lora_params})
    result["adapter_dtypes_as_loaded"] = dtypes
    for p in lora_params:
        p.data = p.data.to(dtype)
    record("lora_bf16", *timed(score))
    for p in lora_params:
        p.data = p.data.float()

    if device == "cuda":
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=model.get_base_model(), rope=True, rms_norm=True, swiglu=True)
            score()  # Triton compiles here
            record("liger", *timed(score))
            profile("profile_liger_60_pairs")  # notebook 05 as it is now: Liger's kernels where training had them
        except ImportError as e:
            result["variants"]["liger"] = {"skipped": str(e)}

    out = Path(a.out) if a.out else work / "scorer_variants.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    bench.log(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
