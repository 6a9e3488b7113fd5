"""The README's shell commands, as the tests execute them (tests/test_readme_commands.py, tests/test_e2e.py)."""

import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """Every command line in the README's ```bash blocks, without its trailing comment."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(shlex.split(line)))
    return commands


def run_readme_command(command: str, outputs: Path, timeout: int = 1500, stdin: str = "") -> subprocess.CompletedProcess:
    """Run one README command from the repo root, as a learner would; runs go to `outputs` (ORPO_OUTPUTS_DIR, which
    the runner and notebooks read) instead of the repo's outputs/ folder, and a literal outputs/ path in the command
    is pointed there too. `stdin`: what the learner types (an interactive command ends at its end)."""
    assert command in readme_commands(), f"not a README command: {command}"
    env = {**os.environ, "ORPO_OUTPUTS_DIR": str(outputs), "PYTHONUNBUFFERED": "1"}
    command = command.replace(" outputs/", f" {outputs}/")
    return subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          input=stdin)
