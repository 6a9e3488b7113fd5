# Sourced (not run) by the device-box wrappers (gpu_series_check.sh, multi_gpu_scaling.sh), from the repo root:
# installs the carried wheels exactly as ../shared/tools/gpu-wheels.sh says (skipped when this warm machine already
# has the same ones), registers the python3 Jupyter kernel for papermill, and puts the repo on PYTHONPATH.
# Returns 2 (the caller exits) if an install fails.
if compgen -G ".whl/*.whl" >/dev/null; then
  stamp=$(ls -l .whl/*.whl | sha256sum | cut -c1-16)
  if [ "$(cat /tmp/site/.gpu-check-wheels 2>/dev/null)" != "$stamp" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "device_wheels.sh: installing .whl/ failed" >&2; return 2; }
    echo "$stamp" > /tmp/site/.gpu-check-wheels
  fi
  export PYTHONPATH=/tmp/site
  python3 -m ipykernel install --user --name python3 >/dev/null \
    || { echo "device_wheels.sh: installing the python3 Jupyter kernel failed" >&2; return 2; }
else
  echo "device_wheels.sh: no .whl/ here: using the installed packages"
fi
# The repo's helpers for the runner and the scripts (the notebooks add the repo root themselves).
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
