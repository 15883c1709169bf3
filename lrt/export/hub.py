"""`lrt export ... --push-to-hub REPO`: upload an export folder to the Hugging Face Hub."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from lrt.errors import LrtError

log = logging.getLogger("lrt")


def check_repo_id(repo_id: str) -> None:
    """A Hub repo id (`org/name`) the Hub accepts; checked before anything is written or sent."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise LrtError(f"--push-to-hub {repo_id!r}: not a valid Hub repo id ({str(e).splitlines()[0]}); "
                       "use ORG/NAME (letters, digits, '-', '_', '.')") from None


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Upload an export folder to the Hugging Face Hub (`HfApi.create_repo` + one commit).

    Only the files lrt wrote are uploaded (`lrt.export.dir.upload_list`: regular files, no symlinks,
    no stray `.env`); the card's usage snippets name the repo in the uploaded copy only, so a failed
    push leaves the local export as it was. The token comes from the environment (`HF_TOKEN`) or
    huggingface_hub's own login cache; lrt never writes it anywhere. `HF_ENDPOINT` selects another
    Hub (or a local test server)."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from lrt.export.card import PLACEHOLDER
    from lrt.export.dir import upload_list
    from lrt.io.weights import one_line

    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise LrtError(f"{folder}: not an exported model (no config.json); run `lrt export RUN_DIR --out DIR` first")
    names = upload_list(folder)
    if constants.HF_HUB_OFFLINE:
        raise LrtError("offline mode (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1) is set: unset it to push to the Hub")
    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise LrtError("no Hugging Face token: set HF_TOKEN to a token with write access (or run `hf auth login`)")
    ops = []
    for n in names:
        data = (folder / n).read_bytes()
        if n == "README.md":
            data = data.decode("utf-8").replace(PLACEHOLDER, repo_id).encode("utf-8")
        ops.append(CommitOperationAdd(path_in_repo=n, path_or_fileobj=data))
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        # private=None (not False) without --private: the Hub's (or the organisation's) default visibility
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id=repo_id, operations=ops, repo_type="model",
                                 commit_message=commit_message or f"lrt export ({folder.name})")
    except (HfHubHTTPError, ValueError, OSError) as e:
        raise LrtError(f"push to {repo_id} failed: {one_line(e).replace(token, '***')}") from None
    log.info("pushed %s to %s (%s)", folder, url, getattr(info, "commit_url", info))
    return str(url)
