"""Hugging Face Hub access with errors that say what to do (notebook 01 checks early; 02-05 wrap loads). The token
is never a parameter (huggingface_hub reads HF_TOKEN or `huggingface-cli login`), so it never lands in a file."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from offline_default import OFFLINE_DATASET_ID, OFFLINE_MODEL_ID

FIX = ("Fix: check the id and your network; for a gated model accept its license on huggingface.co and run "
       "`huggingface-cli login` (or set HF_TOKEN in the environment); without the Hub use the offline default "
       f"(profile tiny: {OFFLINE_MODEL_ID} / {OFFLINE_DATASET_ID}) or a local folder.")


class HubAccessError(RuntimeError):
    """The Hub can't serve what the run needs; the message says why and what to do."""


def is_hub_id(name: str) -> bool:
    """True for 'owner/name' ids that are neither the offline default nor an existing local path."""
    return name not in (OFFLINE_MODEL_ID, OFFLINE_DATASET_ID) and not Path(name).expanduser().exists()


def check_hub_access(repo_id: str, repo_type: str = "model") -> None:
    """Ask the Hub for the repo's metadata (a second, no download) so problems surface before any work."""
    if not is_hub_id(repo_id):
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type)
    except GatedRepoError:
        raise HubAccessError(f"{repo_id} is gated and this machine has no token with access to it. {FIX}") from None
    except RepositoryNotFoundError:
        raise HubAccessError(f"{repo_id} was not found on the Hub (a typo, or private without a token). "
                             f"{FIX}") from None
    except Exception as err:  # offline mode, DNS, proxy, timeout: all mean "no Hub here"
        raise HubAccessError(f"Cannot reach the Hugging Face Hub for {repo_id} ({type(err).__name__}). {FIX}") from None


@contextmanager
def hub_errors_explained(repo_id: str):
    """Wrap a `from_pretrained` call: turn the Hub's OSError into one message with the fix."""
    try:
        yield
    except OSError as err:
        if not is_hub_id(repo_id):
            raise
        raise HubAccessError(f"Could not load {repo_id} ({str(err).splitlines()[0][:200]}). {FIX}") from None
