"""Upload an HF directory to the Hugging Face Hub (``huggingface_hub.HfApi``)."""
from __future__ import annotations

from pathlib import Path


class HubError(RuntimeError):
    """A Hub operation failed (offline, no token, network or permission error); one-line message."""


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload spikelm model") -> str:
    """Create (if needed) the model repo ``repo_id`` and upload every file of ``folder`` to it.

    The local folder is only read, never modified, whatever happens.

    Args:
        folder: an existing directory (e.g. written by ``spikelm export``).
        repo_id: ``owner/name`` on the Hub.
        private: create the repo private (only when it does not exist yet).
        token: a Hub token (default: ``HF_TOKEN`` / the one saved by ``hf auth login``).
        commit_message: the commit message of the upload.
    Returns:
        The URL of the commit (``huggingface_hub.CommitInfo.commit_url``).
    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        HubError: offline mode (``HF_HUB_OFFLINE=1``), an invalid repo id, no token, or a network /
            authorisation failure; the message says which and that ``folder`` is intact.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory; nothing to upload")
    intact = f"the local directory {d} is intact"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"invalid Hub repo id {repo_id!r} ({e}); {intact}") from None
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot upload to {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); unset it and retry; "
                       f"{intact}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(d), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message)
    except Exception as e:  # network, auth, HTTP errors: all reported the same way
        msg = " ".join(str(e).split())[:300]
        hint = " (log in with `hf auth login` or set HF_TOKEN)" if "401" in msg or "token" in msg.lower() else ""
        raise HubError(f"upload to {repo_id} failed: {type(e).__name__}: {msg}{hint}; {intact}") from e
    return info.commit_url
