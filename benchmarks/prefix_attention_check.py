"""GPU check of prefix sharing's attention backends before a long benchmark trusts them (issue #12).

    python benchmarks/prefix_attention_check.py      # CUDA only, ~1 minute; exit status 1 on a wrong result

On a packed row shaped like notebook 04's h100 micro-batch (16 pairs with UltraFeedback-like prompt and answer
lengths, Mistral-7B's attention shape: 32 query heads, 8 key/value heads, head size 128, bf16), it compares the
output and the query/key/value gradients of
  varlen   FlashAttention's variable-length kernel over engine.prefix_sharing.varlen_plan (the "auto" choice)
  flex     FlexAttention with the BlockMask (compiled)
with `varlen_reference` in float32 (the same rule, one SDPA call per segment with an explicit mask) as the truth,
and times forward + backward of each. Both must be within bf16 error of the truth (relative L2 error < 1e-2); the
output says how the two compare in speed. A wrong plan or a kernel that aligns its causal mask differently (top-left
instead of bottom-right) gives an error of order 1, not 1e-3.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.prefix_sharing import _flex, block_mask, pack_groups, varlen_attention, varlen_plan  # noqa: E402


def packed_row(pairs: int = 16, seed: int = 0):
    rng = random.Random(seed)
    groups = []
    for _ in range(pairs):
        prompt = [rng.randrange(3, 32000) for _ in range(rng.randint(30, 400))]
        groups.append([prompt + [rng.randrange(3, 32000) for _ in range(rng.randint(20, 500))] for _ in range(2)])
    return pack_groups(groups, pack_multiple=128)


def main() -> int:
    if not torch.cuda.is_available():
        sys.exit("prefix_attention_check.py needs a CUDA GPU")
    dev = torch.device("cuda")
    packed = packed_row().to(dev)
    n = packed.input_ids.shape[1]
    torch.manual_seed(0)
    q = torch.randn(1, 32, n, 128, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, 8, n, 128, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, 8, n, 128, device=dev, dtype=torch.bfloat16)
    grad_out = torch.randn(1, n, 32, 128, device=dev, dtype=torch.bfloat16)
    plan, bm = varlen_plan(packed), block_mask(packed)
    scale = 128 ** -0.5

    def varlen(q, k, v, reference=False):  # what the registered attention function runs for a varlen plan
        return varlen_attention(q, k, v, plan, scale, reference)

    def flex(q, k, v):
        return _flex(False)(q, k, v, block_mask=bm, scale=scale, enable_gqa=True).transpose(1, 2)

    def run(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad_out.to(dtype))
        return [out.detach().float()] + [t.grad.float() for t in leaves]

    truth = run(lambda q, k, v: varlen(q, k, v, reference=True), torch.float32)
    result = {"tokens": n, "pairs": len(packed.prefix_lens), "segments": len(plan.cu_q) - 1, "gpu": torch.cuda.get_device_name(),
              "torch": torch.__version__}
    ok = True
    for name, fn in (("varlen", varlen), ("flex", flex)):
        try:
            got = run(fn, torch.bfloat16)
        except Exception as e:  # noqa: BLE001  (a backend that cannot run here is reported, not hidden)
            result[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            ok = False
            continue
        errs = [float((g - t).norm() / t.norm()) for g, t in zip(got, truth, strict=True)]
        for _ in range(3):  # warm-up (flex compiles in the first call)
            run(fn, torch.bfloat16)
        torch.cuda.synchronize()
        t0, reps = time.perf_counter(), 20
        for _ in range(reps):
            run(fn, torch.bfloat16)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / reps * 1e3
        result[name] = {"rel_err_out_dq_dk_dv": [round(e, 5) for e in errs], "fwd_bwd_ms": round(ms, 2),
                        "ok": max(errs) < 1e-2}
        ok &= max(errs) < 1e-2
    if "fwd_bwd_ms" in result.get("varlen", {}) and "fwd_bwd_ms" in result.get("flex", {}):
        result["flex_over_varlen_time"] = round(result["flex"]["fwd_bwd_ms"] / result["varlen"]["fwd_bwd_ms"], 2)
    result["ok"] = ok
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
