"""Test-session settings shared by the unit tests, the end-to-end test and nbval."""

import os
import tempfile


def pytest_configure(config):
    # Runs (ours and the notebooks' under nbval) go to a fresh folder, never into the learner's outputs/.
    # Set before nbval starts kernels, which inherit the environment.
    os.environ.setdefault("ORPO_OUTPUTS_DIR", tempfile.mkdtemp(prefix="orpo-test-outputs-"))
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network
    # A fake token: the end-to-end test checks that it never lands in a run directory.
    os.environ["HF_TOKEN"] = "hf_FAKEtokenFORleakCHECKS0123456789abcdef"


def pytest_collectstart(collector):
    # nbval: warnings on stderr differ across library versions; never compare them.
    if getattr(collector, "fspath", None) is not None and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += ("stderr",)
