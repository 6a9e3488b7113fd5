"""Notebook 04 on several processes (DDP-QLoRA, FSDP-QLoRA) with `accelerate launch`, from the notebook itself.

One source of truth: the launched processes run **notebook 04's own code cells** (the same BitsAndBytesConfig,
LoraConfig, ORPOConfig and trainer cells a one-process run executes), not a second copy of them in a script.

* In the kernel (`train_in_several_processes`, the one cell of notebook 04's "Several GPUs" section): with
  num_processes 1 nothing happens. With N > 1 it starts `accelerate launch --num_processes N -m engine.multi_gpu
  <notebook> <parameters>` as a subprocess, streams rank 0's output into the notebook and, if the launch fails,
  raises one error with the failing output's tail. After a successful launch, the kernel does not run the training
  cells again: each of them prints one line instead (an IPython input transformer, removed after the last one).
  (On a CPU the same torchrun-based launcher is used and the Trainer's `use_cpu=True` picks the gloo backend:
  accelerate's own `--cpu --num_processes 2` starts ONE process unless MPI is installed, measured with accelerate
  1.15.)
* In every launched process (`python -m engine.multi_gpu`, `main`): the notebook's code cells are executed in order,
  with the parameters cell replaced by the kernel's values, up to the cell tagged `last-training-cell` (the save),
  skipping the launch cell. Rank 0 alone writes the run directory (the notebook asks `trainer.is_world_process_zero()`;
  the Trainer writes checkpoints from rank 0, plus each rank's RNG state). Under FSDP, `main` adapts two things
  between cells, so notebook 04 needs no FSDP branches: reentrant checkpointing (PEFT's FSDP-QLoRA recipe) and the
  trainer's preparation and adapter saving (`prepare_fsdp_qlora`, `save_fsdp_adapter`).
* A process whose launcher (the kernel) disappears stops itself (`_exit_with_launcher`): a killed notebook never
  leaves N processes training into the run directory.
* The launched processes inherit the kernel's environment, $ORPO_RUN_LOCK included: their `open_run` is let through
  the run's lock that the kernel (or the runner above it) holds (helpers.rundir.hold_run); anyone else is refused.

Used by notebook 04 (`num_processes`), tests/test_distributed.py and benchmarks/multi_gpu_scaling.py.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import nbformat

from helpers.profiles import FSDP_NEEDS_GPUS, ParameterError

from . import fsdp_launched

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_04 = REPO_ROOT / "notebooks" / "04_orpo_training.ipynb"
LAST_TRAINING_CELL = "last-training-cell"  # the tag of the cell after which launched processes stop
LAUNCH_CELL = "several-gpus"  # the tag of the cell that launches them (they skip it)
_LAUNCHER_ENV = "ORPO_LAUNCHER_PID"  # set for launched processes: the kernel that started them
IN_LAUNCHED_PROCESS = _LAUNCHER_ENV in os.environ


class DistributedLaunchError(RuntimeError):
    """`accelerate launch` failed; the message holds the end of what the processes printed."""


# ----------------------------------------------------------------------------------------------- the kernel side


def visible_gpus() -> int:
    """CUDA devices this process may use, without initialising CUDA (safe before a launch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_num_processes(num_processes, device: str, strategy: str = "ddp") -> int:
    """`num_processes` as a number: "auto" = every visible GPU (1 on a CPU); an int is checked against the GPUs.

    On a CPU, N > 1 is allowed on purpose for DDP: N gloo processes rehearse the multi-GPU path (tests, CI); FSDP
    is refused there (accelerate's FSDP needs an accelerator).
    """
    if num_processes == "auto":
        n = max(visible_gpus(), 1) if device == "cuda" else 1
    elif device == "cuda" and num_processes > visible_gpus():
        raise ParameterError(f"Parameter `num_processes` = {num_processes}, but {visible_gpus()} GPU(s) are visible. "
                             f"Fix: `-p num_processes auto` (uses all of them) or a number up to {visible_gpus()}.")
    else:
        n = int(num_processes)
    if strategy == "fsdp" and n > 1 and device != "cuda":
        raise ParameterError(FSDP_NEEDS_GPUS)
    if strategy == "fsdp" and n == 1:
        print("distributed = 'fsdp' with 1 process: nothing to shard, so this trains on one device as usual "
              "(FSDP starts with num_processes > 1).")
    return n


FSDP_CONFIG = REPO_ROOT / "configs" / "accelerate" / "fsdp_qlora.yaml"


def launch_command(num_processes: int, notebook: Path, parameters: Path, port: int | None = None,
                   strategy: str = "ddp") -> list[str]:
    """The `accelerate launch` command line that runs `notebook`'s training cells in `num_processes` processes:
    DDP (`--multi_gpu`), or FSDP with configs/accelerate/fsdp_qlora.yaml."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    launcher = [accelerate, "launch"] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    how = ["--config_file", str(FSDP_CONFIG)] if strategy == "fsdp" else ["--multi_gpu", "--mixed_precision", "no",
                                                                         "--dynamo_backend", "no"]
    return [*launcher, *how, "--num_processes", str(num_processes), "--num_machines", "1",
            "--main_process_port", str(port or _free_port()), "-m", "engine.multi_gpu", str(notebook),
            str(parameters)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_training(parameters: dict, num_processes: int, notebook: Path = NOTEBOOK_04, tail_lines: int = 60,
                    echo=print, strategy: str = "ddp") -> None:
    """Run `notebook`'s training cells in `num_processes` processes; stream their output; raise if they fail.

    `parameters` are the notebook's parameter values (its parameters cell), so every process opens the same run.
    """
    with _parameters_file(parameters) as path:
        cmd = launch_command(num_processes, notebook, path, strategy=strategy)
        # os.environ carries $ORPO_RUN_LOCK, the run lock's token: the processes write the run as this kernel does
        env = {**os.environ, _LAUNCHER_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        echo(f"$ accelerate launch{' --config_file ' + FSDP_CONFIG.name if strategy == 'fsdp' else ''} "
             f"--num_processes {num_processes} ... -m engine.multi_gpu {notebook.name}")
        tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        process = subprocess.Popen(cmd, cwd=notebook.parent, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                echo(line.rstrip("\n"))
            returncode = process.wait()
        except BaseException:  # an interrupted cell (KeyboardInterrupt) must not leave the processes training
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if returncode != 0:
        raise DistributedLaunchError(f"accelerate launch with {num_processes} processes failed (exit code "
                                     f"{returncode}). Last lines of its output:\n" + "\n".join(tail))


def train_in_several_processes(run_name: str, cfg, precision: dict, notebook: Path = NOTEBOOK_04) -> int:
    """Notebook 04's "Several GPUs" cell. num_processes 1 (the default): returns 1 and nothing happens. N > 1:
    the notebook's training cells run in N launched processes (their output streams into this cell), then the same
    cells in this kernel only print one line each. Returns the number of processes."""
    _stop_skipping()  # running this cell again starts afresh
    processes = resolve_num_processes(cfg.num_processes, precision["device"], cfg.distributed)
    if processes == 1:
        print("num_processes 1: sections 1-7 train in this notebook.")
        return 1
    launch_training({"run_name": run_name}, processes, notebook=notebook, strategy=cfg.distributed)
    _skip_training_cells(notebook, processes)
    return processes


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _cells_after_launch(notebook: Path) -> list[str]:
    """Sources of the code cells the launched processes ran after the launch cell (up to `last-training-cell`)."""
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    start = next((k for k, c in enumerate(code) if LAUNCH_CELL in c.metadata.get("tags", [])), -1)
    cells = []
    for cell in code[start + 1:]:
        cells.append(_normalized(cell.source))
        if LAST_TRAINING_CELL in cell.metadata.get("tags", []):
            break
    return cells


_skipping: dict = {}


def _skip_training_cells(notebook: Path, processes: int) -> None:
    """In an IPython kernel: a cell whose source is one of the training cells the launched processes just ran is
    replaced by a one-line print (they trained; this kernel must not train again), until the last of them ran.
    Matching is by source, so any other cell the learner runs meanwhile runs as usual."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    cells = _cells_after_launch(notebook)
    message = (f"(ran in the {processes} launched processes: their output is above, under 'Several GPUs'; "
               "this kernel does not train again)")

    def replace_training_cell(lines: list[str]) -> list[str]:
        return [f"print({message!r})\n"] if _normalized("".join(lines)) in cells else lines

    def stop_after_last(result) -> None:
        if cells and _normalized(getattr(result.info, "raw_cell", "") or "") == cells[-1]:
            _stop_skipping()

    shell.input_transformers_cleanup.append(replace_training_cell)
    shell.events.register("post_run_cell", stop_after_last)
    _skipping.update(shell=shell, transformer=replace_training_cell, event=stop_after_last)


def _stop_skipping() -> None:
    shell = _skipping.pop("shell", None)
    if shell is None:
        return
    transformer, event = _skipping.pop("transformer"), _skipping.pop("event")
    if transformer in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.remove(transformer)
    try:
        shell.events.unregister("post_run_cell", event)
    except ValueError:
        pass


@contextlib.contextmanager
def _parameters_file(parameters: dict):
    """A temporary JSON file with the parameter values (outside the run directory: rank 0 alone writes there)."""
    fd, name = tempfile.mkstemp(prefix="orpo-launch-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(parameters, f)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- the process side


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's GPU (notebook 04 loads its 4-bit model there: device_map={"": local_rank()})."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def training_cells(notebook: Path, parameters: dict) -> list[tuple[int, str]]:
    """(cell index, source) of the code cells a launched process runs: from the top to the cell tagged
    `last-training-cell`; the parameters cell keeps its defaults, then gets the kernel's values (run_name: every
    other value comes from the run's params.json, where the kernel's `open_run` recorded its overrides)."""
    nb = nbformat.read(notebook, as_version=4)
    cells, last_found = [], False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags:
            source = cell.source + "\n" + "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
        elif "injected-parameters" in tags or LAUNCH_CELL in tags:
            continue  # papermill's copy of the values (an executed notebook), or the launch itself
        else:
            source = cell.source
        cells.append((index, source))
        if LAST_TRAINING_CELL in tags:
            last_found = True
            break
    if not last_found:
        raise ValueError(f"{notebook.name} has no code cell tagged {LAST_TRAINING_CELL!r}: launched processes would "
                         "not know where training ends.")
    return cells


def _exit_with_launcher(poll_s: float = 2.0) -> None:
    """Stop this process when the kernel that launched it is gone (killed notebook, preempted machine)."""
    launcher = int(os.environ.get(_LAUNCHER_ENV, "0"))

    def watch():
        while True:
            time.sleep(poll_s)
            try:
                os.kill(launcher, 0)
            except ProcessLookupError:
                os._exit(75)  # no cleanup: the run directory keeps its last complete checkpoint
            except PermissionError:
                pass

    if launcher:
        threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> None:
    notebook, parameters_path = Path(argv[0]), Path(argv[1])
    parameters = json.loads(parameters_path.read_text())
    _exit_with_launcher()
    import torch

    if torch.cuda.is_available():  # before any cell: a quantized load without device_map lands on this GPU
        torch.cuda.set_device(local_rank())
    if rank() != 0:  # rank 0 speaks for all; the others' errors (tracebacks) still reach stderr
        sys.stdout = open(os.devnull, "w")
        warnings.simplefilter("ignore")
    namespace: dict = {"__name__": "__main__"}
    adapt = _fsdp_adaptations() if fsdp_launched() else {}
    for index, source in training_cells(notebook, parameters):
        code = compile(source, f"{notebook.name}[cell {index}]", "exec")  # tracebacks name the notebook cell
        exec(code, namespace)
        for name in [name for name in adapt if name in namespace]:  # the cell that first defines `name`
            adapt.pop(name)(namespace)
    if not namespace["trainer"].is_fsdp_enabled:  # FSDP shards the weights: there are no replicas to compare
        check_replicas_agree(namespace["trainer"].model)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # end the process group ourselves: left to the interpreter's
        dist.barrier()                                 # exit, it aborted a finished CPU run once in CI (SIGABRT,
        dist.destroy_process_group()                   # "terminate called without an active exception")
    # Everything is written (the Trainer and notebook 04's cells close their files). Skip the interpreter's teardown:
    # even after destroy_process_group it aborted a finished 2-process CPU run in CI again (same SIGABRT), which the
    # launcher reports as a failed training.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _fsdp_adaptations() -> dict:
    """What `main` changes under FSDP right after the notebook cell that defines each name, so that notebook 04's
    cells stay the one-process lesson."""

    def reentrant_checkpointing(ns) -> None:  # before the trainer is built (TRL prepares checkpointing in __init__)
        ns["training_args"].gradient_checkpointing_kwargs = {"use_reentrant": True}  # PEFT's FSDP-QLoRA recipe

    def prepare_trainer(ns) -> None:
        import torch

        trainer = ns["trainer"]
        prepare_fsdp_qlora(trainer, getattr(torch, ns["precision"]["torch_dtype"]))
        expected = adapter_tensor_names(trainer.model)  # before FSDP flattens them
        save_checkpoint = trainer.save_model

        def save_model(output_dir=None, _internal_call=False):  # the notebook's save: the gathered adapter
            if _internal_call:  # the Trainer's own checkpoints stay FSDP's sharded ones
                return save_checkpoint(output_dir, _internal_call=True)
            save_fsdp_adapter(trainer, output_dir)
            if rank() == 0:
                check_saved_adapter(output_dir, expected)

        trainer.save_model = save_model
        print("FSDP-QLoRA is experimental here: its sharded checkpoints are not resumed (a rerun starts from step "
              "0), and DDP is faster wherever the 4-bit model fits one GPU.")

    return {"training_args": reentrant_checkpointing, "trainer": prepare_trainer}


def prepare_fsdp_qlora(trainer, storage_dtype) -> int:
    """Notebook 04 with `distributed fsdp`, after the trainer is built and before `train()` wraps the model.

    FSDP (use_orig_params false) flattens the parameters of each wrapped block into ONE tensor, which needs one dtype
    and one requires_grad. A QLoRA model as TRL prepares it breaks both: PEFT's `prepare_model_for_kbit_training`
    (which TRL calls) upcasts every non-4-bit weight to float32 and TRL casts embeddings and lm_head back to bf16,
    leaving the norms float32, while the packed 4-bit weights are stored in `storage_dtype` (notebook 03's
    bnb_4bit_quant_storage); and the trainable LoRA weights (float32) sit next to frozen ones. Measured on 2 H100s:
    "Must flatten tensors with uniform dtype but got torch.bfloat16 and torch.float32". So: PEFT's wrap policy gives
    every LoRA layer a block of its own (they stay float32), the frozen float32 tensors go back to `storage_dtype`,
    and every block is checked here, with one clear error instead of FSDP's deep one. Returns how many parameter
    tensors were cast.
    """
    from peft.utils.other import fsdp_auto_wrap_policy

    policy = fsdp_auto_wrap_policy(trainer.model)
    trainer.accelerator.state.fsdp_plugin.auto_wrap_policy = policy
    cast = cast_frozen_float32(trainer.model, storage_dtype)
    mixed = {unit: kinds for unit, kinds in fsdp_unit_kinds(trainer.model, policy).items() if len(kinds) > 1}
    if mixed:
        raise ValueError(f"FSDP needs one dtype and one requires_grad per wrapped block, but these mix them "
                         f"((dtype, trainable) pairs): {mixed}. Fix: train this model with `-p distributed ddp`, or "
                         "cast its other float32 weights to the 4-bit storage dtype too.")
    return cast


def fsdp_lora_state_dict(fsdp_model, adapter_name: str = "default") -> dict:
    """The LoRA tensors of an FSDP-wrapped PeftModel, gathered in full, named as PEFT saves them (adapter name
    dropped). Every process must call it (the gather is a collective); rank 0 gets the tensors, the others {}.

    Why not `trainer.save_model`: PEFT 0.21's `get_peft_model_state_dict` finds the LoRA entries by walking the
    model's modules, and strips `_fsdp_wrapped_module.` only at the START of a module name; FSDP's per-layer wrapping
    puts it in the middle (`...layers.0._fsdp_wrapped_module.self_attn...`), so nothing matches the gathered state
    dict's clean names and the adapter file comes out EMPTY, without an error (measured on 2 H200s; rebuilt on CPU in
    tests/test_fsdp_adapter.py). Here the gathered names are filtered directly.
    """
    import torch
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    on_gpu = next(fsdp_model.parameters()).is_cuda
    config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=on_gpu)  # CPU (gloo tests): no offload exists
    with FSDP.state_dict_type(fsdp_model, StateDictType.FULL_STATE_DICT, config):
        full = fsdp_model.state_dict()
    if rank() != 0:
        return {}
    tag = f".{adapter_name}."
    return {key.replace(tag, "."): value.detach().to("cpu", copy=True).contiguous() for key, value in full.items()
            if ".lora_" in key and tag in key and isinstance(value, torch.Tensor)}


def save_fsdp_adapter(trainer, out_dir) -> int:
    """Notebook 04 with `distributed fsdp`: writes the trained adapter (adapter_model.safetensors +
    adapter_config.json, as `PeftModel.save_pretrained` would) from rank 0; every process must call it. Returns the
    number of tensors written (0 on the other ranks)."""
    from safetensors.torch import save_file

    peft_model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    name = peft_model.active_adapter
    tensors = fsdp_lora_state_dict(trainer.model_wrapped, name)
    if rank() != 0:
        return 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_model.peft_config[name].save_pretrained(str(out_dir))
    return len(tensors)


def cast_frozen_float32(model, dtype) -> int:
    """Casts the frozen float32 parameter tensors (the norms in a bf16 run; embeddings too in an fp16 run) to
    `dtype`; trainable ones keep their precision. Returns how many were cast."""
    import torch

    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32 and dtype != torch.float32:
            param.data = param.data.to(dtype)
            cast += 1
    return cast


def fsdp_unit_kinds(model, policy) -> dict[str, set]:
    """The (dtype, requires_grad) pairs of the parameters FSDP would flatten together under the auto-wrap `policy`:
    each wrapped module (and the root) owns its parameters except those of wrapped modules inside it, as torch's
    recursive wrap does. FSDP with use_orig_params false needs exactly one pair per block."""
    units: dict[str, set] = {}

    def visit(module, unit: str, prefix: str) -> None:
        for param in module.parameters(recurse=False):
            units.setdefault(unit, set()).add((param.dtype, param.requires_grad))
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            wrapped = policy(module=child, recurse=False, nonwrapped_numel=0)
            visit(child, path if wrapped else unit, path)

    visit(model, "(root)", "")
    return units


def check_replicas_agree(model) -> float:
    """After training, every process must hold the same LoRA weights: that is what DDP's gradient averaging
    guarantees, and what breaks silently when a forward pass bypasses the DDP wrapper. Raises if they differ."""
    import torch
    import torch.distributed as dist

    trained = [p.detach().float().flatten() for p in model.parameters() if p.requires_grad]
    mine = torch.cat(trained).cpu() if trained else torch.zeros(0)
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    gathered = [torch.empty_like(mine, device=backend_device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine.to(backend_device))
    worst = max((g.cpu() - mine).abs().max().item() if mine.numel() else 0.0 for g in gathered)
    if worst > 0:
        raise RuntimeError(f"DDP replicas disagree after training: LoRA weights differ by up to {worst:.3g} between "
                           "processes (gradients were not averaged). This is a bug: please report it.")
    print(f"DDP check: the {mine.numel():,} trained LoRA values are identical in all {dist.get_world_size()} processes")
    return worst


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
            "saving is not verified on GPUs yet: docs/multi-gpu.md); otherwise please report it with this message.")
    return len(saved)


if __name__ == "__main__":
    main(sys.argv[1:])
