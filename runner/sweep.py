"""`python -m runner.sweep`: the series once per parameter value (several --sweep flags: every combination), then
notebooks/06_compare_runs.ipynb compares the runs.

    python -m runner.sweep --sweep beta=0.05,0.1,0.25                    # tiny-beta0.05, tiny-beta0.1, tiny-beta0.25
    python -m runner.sweep --sweep beta=0.05,0.25 --sweep learning_rate=1e-3,3e-3 --run-name grid -p max_steps 200

Every other option is the runner's (`python -m runner --help`) and applies to every run. The runs are named
`<base>-<name><value>` (one `-<name><value>` per --sweep flag; base: --run-name, default the profile's name), so
--sweep beta=0.05 with --run-name base makes outputs/base-beta0.05/. Values are read as `-p NAME VALUE` reads them.
Each run is a whole series by `runner.main`: validated, locked, resumable, never overwritten without --overwrite, and
notebooks 01-03 run again in every run, so each run directory is a complete record of its own series. Before the
first run starts, every combination's parameters are checked. Rerunning the same command skips the runs finished
with the same parameters and resumes an interrupted one. Then notebook 06 is executed into outputs/<base>-sweep/
(`06_compare_runs.ipynb`, `curves.png`, `comparison.json`) with the names of the finished runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time

import runner
from helpers.profiles import ParameterError, resolve_config
from helpers.rundir import RunDir, outputs_root, read_json
from helpers.tracking import GROUP_ENV
from runner import compare


def parse_sweeps(specs: list[str]) -> list[tuple[str, list[str]]]:
    """['beta=0.05,0.1', 'learning_rate=1e-3,3e-3'] -> [('beta', ['0.05', '0.1']), ('learning_rate', [...])]."""
    sweeps = []
    for spec in specs:
        name, _, text = spec.partition("=")
        name, values = name.strip(), [v.strip() for v in text.split(",") if v.strip()]
        if not name or not values:
            raise ParameterError(f"--sweep {spec!r} is not NAME=V1,V2,... Fix: e.g. --sweep beta=0.05,0.1,0.25.")
        if name in ("run_name", "profile"):
            raise ParameterError(f"--sweep {name}: a sweep varies parameters (-p names); run one sweep per profile, "
                                 "and name the runs with --run-name.")
        if name in (n for n, _ in sweeps) or len(set(values)) < len(values):
            raise ParameterError(f"--sweep {spec!r}: each parameter once, each value once.")
        sweeps.append((name, values))
    return sweeps


def run_name_for(base: str, combination: list[tuple[str, str]]) -> str:
    """'base', [('beta', '0.05')] -> 'base-beta0.05'; characters a folder name should not hold become '_'."""
    return base + "".join(f"-{name}{re.sub(r'[^A-Za-z0-9.+_-]', '_', value)}" for name, value in combination)


def plan(args: argparse.Namespace, sweeps: list[tuple[str, list[str]]]) -> list[tuple[str, tuple, str]]:
    """Every combination as (run name, ((name, value), ...), 'run' or 'skip'), checked before anything runs:
    the parameters of each (as the runner will resolve them), unique names, and finished runs (skipped when their
    params.json holds the same parameters; an error otherwise, unless --overwrite)."""
    import torch

    overrides = runner.collect_overrides(args)
    for name, _ in sweeps:
        if name in dict(args.parameter):
            raise ParameterError(f"`{name}` is swept and also set with -p. Fix: drop one of them.")
    for reserved in ("run_name", "profile"):
        if reserved in overrides:
            raise ParameterError(f"Pass `{reserved}` with --{reserved.replace('_', '-')}, not as -p/-f.")
    has_gpu = torch.cuda.is_available()
    cc = tuple(torch.cuda.get_device_capability(0)) if has_gpu else None
    base = args.run_name or args.profile
    runs = []
    for combination in itertools.product(*[[(name, v) for v in values] for name, values in sweeps]):
        name = run_name_for(base, list(combination))
        swept = {k: runner.papermill_value(v) for k, v in combination}
        cfg = resolve_config(args.profile, {**overrides, **swept, "run_name": name}, has_gpu=has_gpu,
                             compute_capability=cc)
        runner.check_optional_packages(cfg)
        run = RunDir(outputs_root() / name)
        action = "run"
        if run.is_finished() and not args.overwrite:
            stored = read_json(run.params)
            changed = {k: (stored.get(k), v) for k, v in cfg.to_dict().items() if stored.get(k) != v}
            if changed:
                raise ParameterError(f"Run {name!r} is finished with other parameters {changed} (stored, new). Fix: "
                                     "another --run-name, or --overwrite (archives it and runs it again).")
            action = "skip"
        runs.append((name, combination, action))
    if RunDir(outputs_root() / f"{base}-sweep").params.exists():
        raise ParameterError(f"outputs/{base}-sweep/ is a run's directory, and the comparison would be written there. "
                             "Fix: another --run-name.")
    if len({name for name, _, _ in runs}) < len(runs):
        raise ParameterError(f"Two combinations get the same run name ({[n for n, _, _ in runs]}). Fix: values that "
                             "differ in letters or digits, not only in other characters.")
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.sweep", description=__doc__, allow_abbrev=False,
                                     usage="%(prog)s --sweep NAME=V1,V2,... [--sweep ...] [runner options]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Every other option is passed to each run: see python -m runner --help.")
    parser.add_argument("--sweep", action="append", required=True, metavar="NAME=V1,V2,...",
                        help="a parameter and its values; several --sweep flags make a grid")
    sweep_args, rest = parser.parse_known_args(argv)
    args = runner.parse_args(rest)  # the runner's own options, checked by its parser
    compare.log_cell_outputs()
    try:
        runs = plan(args, parse_sweeps(sweep_args.sweep))
    except ParameterError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(f"Sweep of {len(runs)} run(s): {', '.join(name for name, _, _ in runs)}", flush=True)
    failed, started = [], time.time()
    group = os.environ.get(GROUP_ENV)  # `report_to tensorboard`: the runs log to outputs/tensorboard/<base>/<run>
    os.environ[GROUP_ENV] = group or args.run_name or args.profile  # (helpers.tracking), unless you chose a group
    try:
        for i, (name, combination, action) in enumerate(runs, 1):
            values = " ".join(f"{k}={v}" for k, v in combination)
            if action == "skip":
                print(f"\n##### run {i}/{len(runs)}: {name} ({values}): finished, skipped #####", flush=True)
                continue
            print(f"\n##### run {i}/{len(runs)}: {name} ({values}) #####", flush=True)
            code = runner.main([*rest, "--run-name", name, *(a for k, v in combination for a in ("-p", k, v))])
            if code == 130:  # Ctrl-C: the runner has said where this run stopped
                raise KeyboardInterrupt
            if code != 0:
                failed.append(name)
    except KeyboardInterrupt:
        print("Sweep interrupted; the same command skips the finished runs and resumes the others.", file=sys.stderr)
        return 130
    finally:
        if group is None:
            del os.environ[GROUP_ENV]
    finished = [name for name, _, _ in runs if RunDir(outputs_root() / name).is_finished()]
    print(f"\n##### {len(finished)} of {len(runs)} run(s) finished in {time.time() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "") + " #####", flush=True)
    if not finished:
        print("No run of this sweep is finished (yet): nothing to compare.", file=sys.stderr)
        return 1 if failed else 0
    import papermill as pm

    out_name = f"{args.run_name or args.profile}-sweep"
    try:
        folder = compare.execute_comparison(finished, out_name, args.kernel)
    except KeyboardInterrupt:
        print("Interrupted during the comparison; the same command skips the finished runs and compares again.",
              file=sys.stderr)
        return 130
    except pm.PapermillExecutionError as err:
        print(f"FAILED: notebooks/{compare.NOTEBOOK.name}, cell {err.exec_count} ({err.ename}): {err.evalue}\nThe "
              f"executed notebook with the traceback: outputs/{out_name}/{compare.NOTEBOOK.name}", file=sys.stderr)
        return 1
    print(f"\nComparison: outputs/{folder.name}/ ({compare.NOTEBOOK.name}, {compare.FIGURE}, {compare.SUMMARY})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
