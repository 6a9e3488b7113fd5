"""Does bitsandbytes' paged 8-bit AdamW survive a resume the way the Trainer does it, on GPU N?

Diagnostic for the 2-process kill/resume failure seen on 2 H100s ("Error invalid argument ... pythonInterface.cpp",
exit 1 right after "Resuming from checkpoint"). Each variant runs in its own process (bitsandbytes exits the process
on a CUDA error): train 3 steps, save the optimizer state, build a fresh optimizer, load the state with the
Trainer's map_location (one GPU: "cpu"; several processes: the process's GPU), take 2 more steps.

    python benchmarks/paged_optimizer_resume.py            # all variants, one line each
"""
import subprocess
import sys

VARIANTS = {  # name: (gpu index, torch.cuda.set_device first?, map_location, paged?)
    "gpu0 map=cpu paged (one-GPU Trainer)": (0, False, "cpu", True),
    "gpu0 map=cuda:0 paged (rank 0 of DDP)": (0, True, "cuda:0", True),
    "gpu1 map=cuda:1 paged (rank 1 of DDP)": (1, True, "cuda:1", True),
    "gpu1 map=cuda:1 paged, no set_device": (1, False, "cuda:1", True),
    "gpu0 map=cuda:0 NOT paged (adamw_8bit)": (0, True, "cuda:0", False),
    "gpu1 map=cuda:1 NOT paged (adamw_8bit)": (1, True, "cuda:1", False),
}


def one(gpu: int, set_device: bool, map_location: str, paged: bool) -> None:
    import io
    import torch
    import bitsandbytes as bnb

    if set_device:
        torch.cuda.set_device(gpu)
    device = torch.device("cuda", gpu)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(16, 4096, device=device) * 0.01) for _ in range(4)]

    def make():
        return bnb.optim.AdamW(params, lr=1e-3, optim_bits=8, is_paged=paged)

    def steps(opt, n):
        for _ in range(n):
            loss = sum((p ** 2).sum() for p in params)
            loss.backward()
            opt.step()
            opt.zero_grad()
        torch.cuda.synchronize(device)
        return float(loss)

    opt = make()
    steps(opt, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt = make()
    opt.load_state_dict(torch.load(buffer, map_location=map_location, weights_only=True))
    print(f"loss after resume {steps(opt, 2):.4f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        gpu, set_device, map_location, paged = sys.argv[1:]
        one(int(gpu), set_device == "1", map_location, paged == "1")
        sys.exit(0)
    for name, (gpu, set_device, map_location, paged) in VARIANTS.items():
        proc = subprocess.run([sys.executable, __file__, str(gpu), str(int(set_device)), map_location, str(int(paged))],
                              capture_output=True, text=True, timeout=120)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-2:]
        print(f"{name:<42} rc {proc.returncode}  {' | '.join(tail)}", flush=True)
