"""`recover`: a short LoRA fine-tune (optionally distilling the dense model) of a pruned checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from optimum_rku.cli.args import CLIError, non_negative_int, positive_float, positive_int, unit_float
from optimum_rku.cli.runtime import base_model_for, check_files, load_model, say
from optimum_rku.config import (
    CONFIG_NAME,
    DEFAULT_ANSWER_TOKENS,
    DEFAULT_DISTILLATION_ALPHA,
    DEFAULT_DISTILLATION_TEMPERATURE,
)


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="pruned checkpoint directory")
    parser.add_argument("--output", required=True, help="directory of the recovered checkpoint")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="training steps (default: 200)")
    parser.add_argument("--learning-rate", type=positive_float, default=None, help="learning rate (default: 2e-4)")
    parser.add_argument("--lora-r", type=positive_int, default=None, help="LoRA rank (default: 16)")
    parser.add_argument("--lora-alpha", type=positive_float, default=None, help="LoRA alpha (default: 2 x rank)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="per-device batch size (default: 8)")
    parser.add_argument(
        "--dataset", default=None, help="Hub dataset id with question/answer, prompt/response or text columns"
    )
    parser.add_argument("--dataset-config", default=None, help="dataset config (default: 'main' for GSM8K)")
    parser.add_argument("--dataset-split", default="train", help="dataset split (default: train)")
    parser.add_argument("--data-files", nargs="+", default=None, help="local json/jsonl training files instead")
    parser.add_argument("--num-samples", type=positive_int, default=None, help="training examples to use")
    parser.add_argument("--max-length", type=positive_int, default=512, help="tokens per example (default: 512)")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="training and data seed")
    parser.add_argument(
        "--chat-template",
        default="auto",
        choices=["auto", "on", "off"],
        help="question/answer rows through the tokenizer's chat template: 'auto' (when it has one, default), 'on' "
        "(required), 'off' (plain 'Question: ...\\nAnswer:')",
    )
    parser.add_argument(
        "--answers",
        default="given",
        choices=["given", "self"],
        help="what the model learns to answer: 'given' (the data's answers, default) or 'self' (the dense model's own "
        "greedy answers to the data's questions: label-free, it distils the model's reasoning and format; answers "
        "that run to --answer-tokens or into a loop are left out)",
    )
    parser.add_argument(
        "--answer-tokens",
        type=positive_int,
        default=None,
        help=f"with --answers self: answer budget (default: {DEFAULT_ANSWER_TOKENS})",
    )
    parser.add_argument(
        "--teacher",
        default=None,
        help="distil a dense model into the pruned one: 'base' (the model the checkpoint was pruned from), a "
        "directory or a Hub id; default: plain cross-entropy",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="with --teacher base or --answers self: the dense model (directory or Hub id) when the checkpoint records "
        "a local folder by name only",
    )
    parser.add_argument(
        "--distillation-alpha",
        type=unit_float,
        default=DEFAULT_DISTILLATION_ALPHA,
        help=f"weight of the KL term in [0, 1] (default: {DEFAULT_DISTILLATION_ALPHA})",
    )
    parser.add_argument(
        "--distillation-temperature",
        type=positive_float,
        default=DEFAULT_DISTILLATION_TEMPERATURE,
        help=f"softmax temperature (default: {DEFAULT_DISTILLATION_TEMPERATURE})",
    )
    parser.add_argument(
        "--save-adapter",
        action="store_true",
        help="also keep the LoRA adapter with the pruned model it was trained on, in <output>/pruned_base/ "
        "(adapter in pruned_base/adapter/)",
    )
    parser.add_argument(
        "--no-merge",
        action="store_true",
        help="do not merge: <output> is the pruned model before recovery with the LoRA adapter in <output>/adapter/",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _load_teacher(name: str, meta: dict[str, Any], base: str | None):
    """The dense teacher for `recover --teacher` and how the summary names it: 'base' is the model the checkpoint was
    pruned from (`--base`, or the name it records; named by its Hub id, else "dense"); another model by the name
    given (no machine path is kept)."""
    label = name
    if name == "base":
        from optimum_rku.hub.labels import hub_model_id

        name = base_model_for(meta, base, "--teacher base")
        label = hub_model_id(name) or "dense"
    teacher, _ = load_model(name, "float32")
    return teacher, label


def _questions(args: argparse.Namespace, meta: dict[str, Any], train_dataset, data_files) -> tuple[list[str], str]:
    """`--answers self`, before any model is loaded: the recovery data's questions (`recovery_questions`) and the
    dense model that answers them (the checkpoint's base)."""
    from optimum_rku.data.providers import provider_for
    from optimum_rku.recovery import recovery_questions

    questions, _ = recovery_questions(
        train_dataset,
        data=provider_for(metadata=meta),
        data_files=data_files[0] if data_files and len(data_files) == 1 else data_files,
        num_samples=args.num_samples,
        seed=_seed(args),
    )
    return questions, base_model_for(meta, args.base, "--answers self")


def _seed(args: argparse.Namespace) -> int:
    from optimum_rku.recovery.training import DEFAULT_TRAINING_ARGS

    return args.seed if args.seed is not None else DEFAULT_TRAINING_ARGS["seed"]


def run(args: argparse.Namespace) -> int:
    """LoRA recovery of a pruned checkpoint with `optimum_rku.recovery.recover_with_lora`; saves the merged model (or,
    with --no-merge, the pruned model with its adapter)."""
    checkpoint = Path(args.checkpoint).expanduser()
    if not (checkpoint / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint!r} is not an optimum-rku checkpoint (no {CONFIG_NAME})."
        )
    data_files = check_files(args.data_files, "--data-files")
    if args.dataset and data_files:
        raise CLIError("pass either --dataset or --data-files, not both.")
    if args.answer_tokens is not None and args.answers != "self":
        raise CLIError(f"--answer-tokens {args.answer_tokens} sets the dense model's answer budget: use it with "
                       f"--answers self (got --answers {args.answers}).")  # fmt: skip
    answer_tokens = args.answer_tokens or DEFAULT_ANSWER_TOKENS
    from optimum_rku.io.checkpoint import check_save_dir
    from optimum_rku.io.metadata import read_metadata

    check_save_dir(args.output, checkpoint, args.overwrite)
    meta = read_metadata(checkpoint)
    lora = {key: value for key, value in (("r", args.lora_r), ("lora_alpha", args.lora_alpha)) if value is not None}
    if "r" in lora and "lora_alpha" not in lora:
        lora["lora_alpha"] = 2 * lora["r"]
    training = {
        key: value
        for key, value in (
            ("max_steps", args.max_steps),
            ("learning_rate", args.learning_rate),
            ("per_device_train_batch_size", args.batch_size),
        )
        if value is not None
    }
    from optimum_rku.data.gsm8k import hub_config
    from optimum_rku.recovery import recover_with_lora

    train_dataset = None
    if args.dataset:
        import datasets

        config_name = args.dataset_config or hub_config(args.dataset)
        try:
            train_dataset = datasets.load_dataset(args.dataset, config_name, split=args.dataset_split)
        except Exception as err:  # network, auth, missing dataset: one actionable line
            raise RuntimeError(
                f"could not load --dataset {args.dataset!r} ({type(err).__name__}: {err}); offline? use --data-files."
            ) from None
    if args.answers == "self":
        questions, dense_name = _questions(args, meta, train_dataset, data_files)
    teacher, teacher_name = _load_teacher(args.teacher, meta, args.base) if args.teacher is not None else (None, None)
    model, tokenizer = load_model(str(checkpoint), "float32")
    num_samples = args.num_samples
    if args.answers == "self":  # the dense model's own answers (self_distillation_dataset) are the training rows
        from optimum_rku.recovery import self_distillation_dataset

        dense = teacher if args.teacher == "base" else load_model(dense_name, "float32")[0]
        say(f"answering {len(questions)} questions with the dense model ({answer_tokens}-token budget)")
        train_dataset = self_distillation_dataset(
            dense, tokenizer, questions, max_new_tokens=answer_tokens, seed=_seed(args),
            progress=not args.quiet, chat_template=args.chat_template,
        )  # fmt: skip
        data_files = num_samples = None  # the questions were read and chosen by _questions
        del dense
    _, summary = recover_with_lora(
        model,
        tokenizer,
        train_dataset,
        lora or None,
        training or None,
        args.output,
        not args.no_merge,
        save_adapter=True if args.no_merge else args.save_adapter,
        overwrite=args.overwrite,
        metadata=meta,
        source=str(checkpoint),
        data_files=data_files[0] if data_files and len(data_files) == 1 else data_files,
        num_samples=num_samples,
        max_length=args.max_length,
        seed=args.seed,
        chat_template=args.chat_template,
        teacher=teacher,
        teacher_name=teacher_name,
        distillation_alpha=args.distillation_alpha,
        distillation_temperature=args.distillation_temperature,
        progress=not args.quiet,
        return_summary=True,
    )
    say(
        f"recovered with LoRA r={summary.get('rank')} for {summary.get('steps')} steps: response loss "
        f"{summary.get('loss_before', float('nan')):.4f} -> {summary.get('loss_after', float('nan')):.4f}"
    )
    output = Path(args.output).expanduser().resolve()
    if args.no_merge:
        say(f"saved the pruned model to {output} and its LoRA adapter to {output / 'adapter'}")
    else:
        say(f"saved to {output}")
        if args.save_adapter:
            say(f"LoRA adapter with its pruned base: {output / 'pruned_base'}")
    return 0
