"""`push`: upload a pruned checkpoint with a regenerated model card to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimum_rku.cli.runtime import say
from optimum_rku.io.metadata import EVAL_RESULTS_FILE


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="pruned checkpoint directory")
    parser.add_argument("--repo-id", required=True, help="target Hub repository, e.g. user/model-rku-40")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--token", default=None, help="Hub write token (default: HF_TOKEN or the stored login; prefer those)"
    )
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument(
        "--eval-results", default=None, help=f"GSM8K results JSON (default: <checkpoint>/{EVAL_RESULTS_FILE})"
    )
    parser.add_argument(
        "--adapter-repo-id",
        default=None,
        help="also push the LoRA adapter a recovered checkpoint keeps in pruned_base/ (with that pruned base) to this "
        "repository; an adapter checkpoint (recover --no-merge) pushes its adapter/ with it anyway",
    )


# ------------------------------------------------------------------------------------------------- push
def run(args: argparse.Namespace) -> int:
    """Upload a checkpoint to the Hub with a regenerated card; print the commit (or pull-request) URL."""
    from optimum_rku.hub.upload import check_checkpoint, check_repo_id, push_to_hub

    check_checkpoint(args.checkpoint)
    check_repo_id(args.repo_id)
    if args.adapter_repo_id is not None:
        check_repo_id(args.adapter_repo_id)
    if args.eval_results is not None and not Path(args.eval_results).is_file():
        raise FileNotFoundError(f"--eval-results {args.eval_results!r}: no such file.")
    url = push_to_hub(
        args.checkpoint,
        args.repo_id,
        private=args.private,
        token=args.token,
        eval_results=args.eval_results,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        adapter_repo_id=args.adapter_repo_id,
    )
    if args.adapter_repo_id is not None:
        from optimum_rku.hub.upload import hub_endpoint

        say(f"LoRA adapter with its pruned base: {hub_endpoint()}/{args.adapter_repo_id}")
    say(f"{'pull request' if args.create_pr else 'pushed'}: {url}")
    return 0
