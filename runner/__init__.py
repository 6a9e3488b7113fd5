"""The batch runner: the whole series 01 -> 05 with papermill into `outputs/<run_name>/` (`bash tasks.sh run`).

Not imported by the notebooks: it executes them, exactly as a learner's kernel would, with validated parameters.

    python -m runner                                   # tiny profile, offline default, CPU, minutes
    python -m runner --profile h100 --run-name h100-a -p learning_rate 5e-5 -f my_params.yaml

Parameters are validated before any notebook starts; notebook 01 writes them to params.json, and 02-05 read
them from there. Rerunning an unfinished run resumes it (04 continues from its last checkpoint); a finished
run is never overwritten unless you pass --overwrite (which archives it).

One writer per run: the runner holds the run's lock (helpers.rundir.hold_run) for the whole series; its kernels
inherit the lock's token, so their `open_run` passes, while a second runner or a JupyterLab kernel on the same run is
refused. Ctrl-C stops the kernel (and any processes notebook 04 launched) and prints one line: where the run stopped
and where the same command will resume (exit status 130).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import nbformat
import yaml

from helpers.ifeval import check_ready
from helpers.profiles import PROFILES, ParameterError, choose_profile, resolve_config
from helpers.rundir import REPO_ROOT, STAGE_DONE, RunDir, hold_run, open_run, outputs_root, release_run
from helpers.tracking import check_tracking

NOTEBOOKS = ("01_environment", "02_data_preparation", "03_quantized_model", "04_orpo_training", "05_evaluation")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", help=f"one of {sorted(PROFILES)} or auto (default: tiny)")
    parser.add_argument("--run-name", default=None, help="folder under outputs/ (default: <profile>-demo)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one parameter; VALUE is read as papermill's -p reads it (1e-3, 2e-4, True, "
                             "100); true/false also work for switches")
    parser.add_argument("-f", "--parameters-file", type=Path, help="YAML file of parameter overrides")
    parser.add_argument("--only", help="comma-separated notebook numbers to run, e.g. 04,05 (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="archive a finished run of the same name, rerun")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    return parser.parse_args(argv)


def papermill_value(raw: str):
    """`-p NAME VALUE` exactly as `papermill -p` reads it: True/False/None, then int, then float, else text.

    (PyYAML would read `1e-3` as the *string* '1e-3'; papermill reads it as 0.001.) Text that names a number or a
    switch in another spelling (`true`) is converted to the parameter's declared type by `resolve_config`.
    """
    if raw in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[raw]
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw


def collect_overrides(args: argparse.Namespace) -> dict:
    """YAML file first, then -p pairs (the command line wins). Both are typed by `resolve_config`."""
    overrides = {}
    if args.parameters_file:
        try:
            loaded = yaml.safe_load(args.parameters_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ParameterError(f"Cannot read parameters file {args.parameters_file}: {err}. Fix: pass a YAML "
                                 "mapping such as `learning_rate: 1.0e-3`.") from None
        if not isinstance(loaded, dict):
            raise ParameterError(f"Parameters file {args.parameters_file} must hold a YAML mapping (name: value).")
        overrides.update(loaded)
    for name, raw in args.parameter:
        overrides[name] = papermill_value(raw)
    return overrides


def validate(args: argparse.Namespace, overrides: dict) -> tuple[str, dict]:
    """Everything that can be checked without loading a model; opens the run exactly as notebook 01 will.

    Returns (run_name, parameters for notebook 01). Raises ParameterError / FileExistsError with the fix.
    """
    import torch

    has_gpu = torch.cuda.is_available()
    cc = tuple(torch.cuda.get_device_capability(0)) if has_gpu else None
    named_after = choose_profile(cc)[0] if args.profile == "auto" else args.profile
    run_name = args.run_name or f"{named_after}-demo"  # `--profile auto` on a CPU runs tiny-demo
    for reserved in ("run_name", "profile"):
        if reserved in overrides:
            raise ParameterError(f"Pass `{reserved}` with --{reserved.replace('_', '-')}, not as -p/-f.")
    # optional packages the parameters need: said before the run folder exists (the fix is an install or a new -p)
    check_optional_packages(resolve_config(named_after, {**overrides, "run_name": run_name}))
    cfg, run = open_run(run_name, args.profile, overrides, start=True, overwrite=args.overwrite, has_gpu=has_gpu,
                        compute_capability=cc)
    if run.checkpoints.exists():
        print(f"Resuming unfinished run {run_name!r} with its stored parameters.")
    return run_name, {"run_name": run_name, "profile": cfg.profile, "overrides": overrides}


def check_optional_packages(cfg) -> None:
    """`report_to tensorboard` needs tensorboard; `ifeval` needs lm-eval and nltk's punkt_tab, in notebook 05 (section
    7), after hours of training on a GPU: both are checked before anything runs."""
    check_tracking(cfg)
    if cfg.ifeval:
        try:
            check_ready()
        except (ImportError, LookupError) as err:
            raise ParameterError(str(err)) from None


def run_series(args: argparse.Namespace) -> int:
    import papermill as pm

    overrides = collect_overrides(args)
    run_name, first_params = validate(args, overrides)  # opening the run takes its lock (or says who holds it)
    selected = [nb for nb in NOTEBOOKS if not args.only or nb[:2] in args.only.split(",")]
    run = RunDir(outputs_root() / run_name)
    name = None
    try:
        run.notebooks.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        print(f"Run directory: outputs/{run_name}/  (profile {first_params['profile']})")
        done = run.done_stages()
        for name in selected:
            params = first_params if name.startswith("01") else {"run_name": run_name}
            if name[:2] in done:  # a resumed run: this stage finished before the interruption
                print(f"\n=== {name}: already done ({STAGE_DONE[name[:2]]} exists), skipped ===", flush=True)
                continue
            started = time.time()
            print(f"\n=== {name} ===", flush=True)
            hold_run(run, f"{name[:2]} of `python -m runner`")  # the lock's record names the notebook running
            try:
                pm.execute_notebook(REPO_ROOT / "notebooks" / f"{name}.ipynb", run.notebooks / f"{name}.ipynb",
                                    parameters=params, kernel_name=args.kernel, progress_bar=False, log_output=True,
                                    cwd=REPO_ROOT / "notebooks")
            except pm.PapermillExecutionError as err:
                print(f"\nFAILED: notebooks/{name}.ipynb, cell {err.exec_count} ({err.ename}): {err.evalue}\n"
                      f"The executed notebook with the traceback: outputs/{run_name}/notebooks/{name}.ipynb",
                      file=sys.stderr)
                return 1
            print(f"=== {name} done in {time.time() - started:.0f} s ===", flush=True)
        if run.report.exists():
            print(f"\nReport: outputs/{run_name}/report.md")
        return 0
    except KeyboardInterrupt:
        print(interruption(run, name), file=sys.stderr, flush=True)
        return 130
    finally:
        release_run(run)


def stop_children() -> None:
    """SIGKILL every process the runner started (the kernel, the processes notebook 04 launched), as a preemption
    would: at once and without their clean-up output. The run directory keeps its last complete checkpoint."""
    import psutil  # installed with accelerate

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=30)


def on_ctrl_c(signum, frame) -> None:
    """SIGINT: stop the kernel first (papermill would shut it down mid-cell, printing its tracebacks), then let
    KeyboardInterrupt unwind the runner. A second Ctrl-C during that is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_children()
    raise KeyboardInterrupt


def interruption(run: RunDir, name: str | None) -> str:
    """The one line a Ctrl-C prints: where the run stopped, and what the same command does next."""
    if name is None or name[:2] in run.done_stages():
        return "Interrupted between notebooks; the same command goes on with the next one."
    if not name.startswith("04"):
        return f"Interrupted in {name}; the same command runs it again (the finished notebooks are skipped)."
    executed = run.notebooks / f"{name}.ipynb"  # papermill writes it as the cells run, and on the interruption
    text = "".join(str(out.get("text", "")) for cell in nbformat.read(executed, as_version=4).cells
                   for out in cell.get("outputs", [])) if executed.exists() else ""
    steps = re.findall(r"^step +(\d+)/", text, flags=re.MULTILINE)  # helpers.modeling.PlainProgress's lines
    logging.disable(logging.CRITICAL)  # what importing it logs (bitsandbytes' kernel notes): one line is the point
    with contextlib.redirect_stdout(io.StringIO()):  # its notes on skipped incomplete checkpoints
        from helpers.modeling import latest_valid_checkpoint

        checkpoint = latest_valid_checkpoint(run.checkpoints)
    logging.disable(logging.NOTSET)
    at = f"at step {steps[-1]}" if steps else "before its first logged step"
    then = f"resumes from {Path(checkpoint).name}" if checkpoint else "restarts training (no complete checkpoint yet)"
    return f"Interrupted in {name} {at}; the same command {then}."


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for handler in logging.getLogger().handlers:  # papermill frames every cell with two lines: keep the output only
        handler.addFilter(lambda record: not str(record.msg).startswith(("Executing Cell", "Ending Cell")))
    for noisy in ("papermill.translators", "traitlets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not when started with SIGINT ignored (nohup, a `&` job in a script)
        signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        return run_series(args)
    except (ParameterError, FileExistsError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any notebook started
        print("Interrupted before the first notebook; the same command starts again.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
