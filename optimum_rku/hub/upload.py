"""Publish a pruned checkpoint to the Hugging Face Hub with a model card that carries its evaluation results.

`push_to_hub` never modifies or deletes the local checkpoint: it stages the files to upload (hard links where the
filesystem allows) in a temporary directory, writes the regenerated `README.md` there, and uploads that directory.
The token is only handed to `huggingface_hub` for the Authorization header; it is never written or logged.

Repository layout with a LoRA adapter (see `optimum_rku.io.adapter`): an adapter checkpoint is pushed as it is on
disk, the pruned base at the repository's top level and the adapter in `adapter/`, whose `base_model_name_or_path`
becomes the repository id. A merged checkpoint that carries its adapter checkpoint in `pruned_base/` pushes the
merged model to `repo_id` and, with `adapter_repo_id`, the adapter checkpoint to that second repository (PEFT names
a base by repository id, so the adapter's base needs a repository top level of its own).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from optimum_rku.export.gguf import gguf_files
from optimum_rku.hub.card import CARD_FILE, build_model_card, is_generated_card
from optimum_rku.hub.chart import CHART_FILE, plot_allocation
from optimum_rku.hub.labels import check_repo_id, portable_metadata
from optimum_rku.io.adapter import ADAPTER_DIR, PRUNED_BASE_DIR, adapter_in, nested_adapter_checkpoint, stage_adapter
from optimum_rku.io.metadata import (
    EVAL_RESULTS_FILE,
    REMOTE_CODE_FILE,
    TOKENIZER_FILES,
    check_model_dir,
    read_eval_results,
    read_metadata,
    result_dict,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "rku_config.json"
#: Files of a checkpoint that are uploaded (top level only): weights, configs, tokenizer, remote code, card, chart.
UPLOAD_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.gguf",
    "config.json",
    "generation_config.json",
    METADATA_FILE,
    EVAL_RESULTS_FILE,
    REMOTE_CODE_FILE,
    CHART_FILE,
    *TOKENIZER_FILES,
)
_AUTH_STATUSES = (401, 403)
DEFAULT_COMMIT_MESSAGE = "Upload pruned model with optimum-rku"


class HubPushError(RuntimeError):
    """Pushing to the Hub failed (network, server or offline mode); the message is one line and names the cause."""


class HubAuthenticationError(HubPushError, PermissionError):
    """The Hub refused the credentials (HTTP 401/403): missing, invalid or read-only token, or no write access."""


def hub_endpoint() -> str:
    """The Hub URL to talk to, read at call time: `HF_ENDPOINT` if set, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_checkpoint(checkpoint_dir: Any) -> Path:
    """Make sure `checkpoint_dir` is an optimum-rku checkpoint (config, weights, rku_config.json) before uploading."""
    return check_model_dir(
        checkpoint_dir,
        ("config.json", METADATA_FILE),
        "a complete optimum-rku checkpoint",
        "save one with RKUPruner.save_pretrained or `optimum-rku prune`",
    )


def _stage(source: Path, target: Path) -> list[str]:
    """Hard-link (or copy) the uploadable top-level files of `source` into `target`; return their names."""
    names = []
    for item in sorted(source.iterdir()):
        if not item.is_file() or item.name.startswith("."):
            continue
        if not any(fnmatch.fnmatch(item.name, pattern) for pattern in UPLOAD_PATTERNS):
            continue
        destination = target / item.name
        try:
            os.link(item, destination)
        except OSError:
            shutil.copy2(item, destination)
        names.append(item.name)
    return names


def _one_line(text: Any, secret: str | None) -> str:
    """First non-empty line of an error text, with the token masked in case a server echoed it."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else type(text).__name__
    if secret:
        line = line.replace(secret, "***")
    return line


def push_to_hub(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    eval_results: Any = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    adapter_repo_id: str | None = None,
) -> str:
    """Upload a pruned checkpoint (weights, config, remote code, tokenizer, rku_config.json, card, chart) to the Hub.

    `eval_results` is what `evaluate_gsm8k` returns (or its dict); it defaults to the checkpoint's `eval_results.json`.
    The card is regenerated with those results for the upload (a local README.md whose optimum-rku marker line was
    deleted is uploaded unchanged). An adapter checkpoint's `adapter/` is uploaded too, naming `repo_id` as its base.
    `adapter_repo_id` pushes the adapter checkpoint a merged checkpoint carries in `pruned_base/` to that repository
    first (the merged model's card links it). Returns the commit URL (the pull-request URL when
    `create_pr=True`). Raises `HubAuthenticationError` (a `PermissionError`) on 401/403 and `HubPushError` (a
    `RuntimeError`) on network, server or offline-mode failures, each with a one-line message.
    """
    path = check_checkpoint(checkpoint_dir)
    check_repo_id(repo_id)
    nested = nested_adapter_checkpoint(path)
    if adapter_repo_id is not None:
        check_repo_id(adapter_repo_id)
        if nested is None:
            raise ValueError(
                f"adapter_repo_id={adapter_repo_id!r}: {str(checkpoint_dir)!r} carries no adapter checkpoint "
                f"({PRUNED_BASE_DIR}/ with {ADAPTER_DIR}/); recover with save_adapter=True (--save-adapter) to keep "
                "one."
            )
        if adapter_repo_id == repo_id:
            raise ValueError(
                f"adapter_repo_id must differ from repo_id ({repo_id!r}): the merged model and the adapter's pruned "
                "base would both need the repository's top level."
            )
        check_checkpoint(nested)
    if token is not None and not isinstance(token, str):
        raise TypeError("token must be a string or None (None uses HF_TOKEN or the stored login).")
    if commit_message is not None and (not isinstance(commit_message, str) or not commit_message.strip()):
        raise ValueError("commit_message must be a non-empty string or None.")
    for name, flag in (("private", private), ("create_pr", create_pr)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}.")
    results = result_dict(eval_results) if eval_results is not None else read_eval_results(path)

    from huggingface_hub import constants

    endpoint = hub_endpoint()
    if constants.HF_HUB_OFFLINE:
        raise HubPushError(f"Cannot push to {endpoint}: HF_HUB_OFFLINE is set; unset it to upload.")
    options = {"private": private, "token": token, "commit_message": commit_message, "create_pr": create_pr}
    if adapter_repo_id is not None:
        url = _push(nested, adapter_repo_id, read_eval_results(nested), endpoint=endpoint, **options)
        logger.info("Pushed the LoRA adapter with its pruned base to %s: %s", adapter_repo_id, url)
    elif nested is not None:
        logger.warning(
            "%s/ (the pruned base with its LoRA adapter) is not uploaded; pass adapter_repo_id (--adapter-repo-id) to "
            "publish it in a repository of its own.",
            PRUNED_BASE_DIR,
        )
    return _push(path, repo_id, results, endpoint=endpoint, adapter_checkpoint=adapter_repo_id, **options)


def _push(
    path: Path,
    repo_id: str,
    results: dict[str, Any] | None,
    *,
    endpoint: str,
    private: bool,
    token: str | None,
    commit_message: str | None,
    create_pr: bool,
    adapter_checkpoint: str | None = None,
) -> str:
    """Stage one checkpoint (with its adapter, if it is an adapter checkpoint), write its card and upload it."""
    meta = read_metadata(path)
    portable = portable_metadata(meta)
    with tempfile.TemporaryDirectory(prefix="optimum-rku-push-") as staging_dir:
        staging = Path(staging_dir)
        adapter_dir = _stage_checkpoint(path, staging, repo_id, results, meta, portable)
        _write_card(path, staging, portable, results, repo_id, adapter_dir, adapter_checkpoint)
        info = _upload(staging, repo_id, endpoint, token, private, commit_message, create_pr)
    url = getattr(info, "pr_url", None) if create_pr else None
    return str(url or getattr(info, "commit_url", None) or info)


def _stage_checkpoint(
    path: Path,
    staging: Path,
    repo_id: str,
    results: dict[str, Any] | None,
    meta: dict[str, Any],
    portable: dict[str, Any],
) -> Path | None:
    """Stage all but the card (files, portable metadata, adapter, chart, results); return the adapter dir or None."""
    uploaded = _stage(path, staging)
    if portable != meta:  # an older checkpoint that recorded a machine path: upload the portable record
        (staging / METADATA_FILE).unlink()
        (staging / METADATA_FILE).write_text(json.dumps(portable, indent=2) + "\n", encoding="utf-8")
    adapter_dir = adapter_in(path)
    if adapter_dir is not None:
        uploaded += stage_adapter(adapter_dir, staging, repo_id)
    if CHART_FILE not in uploaded:
        try:
            plot_allocation(portable, staging / CHART_FILE)
        except (ImportError, RuntimeError, OSError, ValueError) as err:
            logger.warning("Could not draw %s (%s); uploading without it.", CHART_FILE, err)
    if results is not None and EVAL_RESULTS_FILE not in uploaded:
        (staging / EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return adapter_dir


def _write_card(
    path: Path,
    staging: Path,
    meta: dict[str, Any],
    results: dict[str, Any] | None,
    repo_id: str,
    adapter_dir: Path | None,
    adapter_checkpoint: str | None,
) -> None:
    """Write the staged README.md: the regenerated card, or the local one unchanged when it was edited by hand."""
    local_card = path / CARD_FILE
    if local_card.is_file() and not is_generated_card(local_card):
        logger.warning("%s was edited by hand (no optimum-rku marker): uploading it unchanged.", CARD_FILE)
        shutil.copy2(local_card, staging / CARD_FILE)
        return
    card = build_model_card(
        meta,
        results,
        repo_id=repo_id,
        has_remote_code=(staging / REMOTE_CODE_FILE).is_file(),
        chart=(staging / CHART_FILE).is_file(),
        gguf_files=gguf_files(staging),
        adapter=ADAPTER_DIR if adapter_dir is not None else None,
        adapter_checkpoint=adapter_checkpoint,
    )
    card.save(staging / CARD_FILE)


def _upload(
    staging: Path,
    repo_id: str,
    endpoint: str,
    token: str | None,
    private: bool,
    commit_message: str | None,
    create_pr: bool,
) -> Any:
    """Upload `staging` in one commit; Hub, network and auth failures become one-line errors with the token masked."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from optimum_rku.version import __version__

    api = HfApi(endpoint=endpoint, token=token, library_name="optimum-rku", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            folder_path=staging,
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            create_pr=create_pr,
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in _AUTH_STATUSES:
            raise HubAuthenticationError(
                f"The Hub at {endpoint} refused to let you write to {repo_id!r} (HTTP {status}): pass a write "
                "token (token=..., --token, HF_TOKEN or `hf auth login`) with access to that namespace."
            ) from None
        raise HubPushError(
            f"Pushing to {repo_id!r} on {endpoint} failed (HTTP {status}): {_one_line(err, token)}"
        ) from None
    except (ConnectionError, OSError) as err:
        raise HubPushError(
            f"Could not reach the Hub at {endpoint} ({_one_line(err, token)}); check the network or HF_ENDPOINT."
        ) from None
    except Exception as err:
        transport = _transport_errors()
        if transport and isinstance(err, transport):
            raise HubPushError(
                f"Could not reach the Hub at {endpoint} ({type(err).__name__}: {_one_line(err, token)}); "
                "check the network or HF_ENDPOINT."
            ) from None
        raise


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport-level exception classes (huggingface_hub uses httpx2, older versions httpx)."""
    import sys

    classes: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx", "requests"):
        module = sys.modules.get(module_name)  # only clients that are in use can have raised
        if module is None:
            continue
        for name in ("TransportError", "RequestException"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                classes.append(cls)
    return tuple(classes)
