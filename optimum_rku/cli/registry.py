"""The command registry shared by `optimum-rku` and `optimum-cli rku`: parsers, error handling, entry point."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Sequence

from optimum_rku.cli import benchmark, export, import_gguf, prune, push, recover
from optimum_rku.cli import eval as eval_command
from optimum_rku.cli.args import INPUT_ERRORS, OneLineParser, add_common_arguments, one_line_error


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand shared by `optimum-rku` and `optimum-cli rku`: its help line, its flags and what it runs."""

    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "prune": Command("Prune a model with RKU (or a baseline) and save the checkpoint", prune.add, prune.run),
    "eval": Command(
        "Evaluate a model on GSM8K exact match (testbed: its own problems)", eval_command.add, eval_command.run
    ),
    "recover": Command(
        "Recover accuracy of a pruned checkpoint with a short LoRA fine-tune", recover.add, recover.run
    ),
    "push": Command("Upload a pruned checkpoint with its model card to the Hugging Face Hub", push.add, push.run),
    "import-gguf": Command(
        "Dequantize a GGUF file (e.g. 'smollm2', 'qwen2.5-coder-0.5b') into a local transformers model directory",
        import_gguf.add,
        import_gguf.run,
    ),
    "export": Command(
        "Export a checkpoint for another runtime: `export gguf` writes one GGUF file for llama.cpp / Ollama",
        export.add,
        export.run,
    ),
    "benchmark": Command(
        "Compare methods and sparsities: prune, evaluate, print a table", benchmark.add, benchmark.run
    ),
}
#: Subcommands of `optimum-rku` that hand their arguments to another module's `main(argv)`.
PASSTHROUGH = {
    "demo": ("optimum_rku.cli.demo", "Run the whole study on the bundled testbed (offline, minutes)"),
    "testbed": ("optimum_rku.testbed.train", "Train the testbed: `optimum-rku testbed train [options]`"),
}


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the flags of subcommand `name` to `parser` (used by both CLIs) and make its errors one line."""
    command = COMMANDS[name]
    parser.description = command.help
    command.add(parser)
    add_common_arguments(parser)
    if not isinstance(parser, OneLineParser):
        parser.error = lambda message: one_line_error(parser, message)  # type: ignore[method-assign]


def _message(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


@contextlib.contextmanager
def _library_bars(show: bool):
    """`--quiet` silences transformers' own progress bars too (e.g. "Writing model shards"), restored afterwards."""
    if show:
        yield
        return
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def run_command(name: str, args: argparse.Namespace, prog: str | None = None) -> int:
    """Run subcommand `name`; expected failures become one stderr line (exit 2 for bad input, 1 otherwise)."""
    prog = prog or f"optimum-rku {name}"
    try:
        with _library_bars(not getattr(args, "quiet", False)):
            return int(COMMANDS[name].run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if getattr(args, "debug", False):
            raise
        code = 2 if isinstance(err, INPUT_ERRORS) else 1
        hint = "" if code == 2 else " (run with --debug for the traceback)"
        print(f"{prog}: error: {_message(err)}{hint}", file=sys.stderr, flush=True)
        return code


def build_parser(prog: str = "optimum-rku") -> argparse.ArgumentParser:
    """The `optimum-rku` parser with every subcommand (demo/testbed are listed; their flags belong to them)."""
    from optimum_rku.version import __version__

    parser = OneLineParser(
        prog=prog, description="Structured pruning of reasoning LLMs with Relative Kinetic Utility."
    )
    parser.add_argument("--version", action="version", version=f"optimum-rku {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join([*COMMANDS, *PASSTHROUGH]) + "}")
    for name, command in COMMANDS.items():
        add_arguments(name, subparsers.add_parser(name, help=command.help, description=command.help))
    for name, (_, help_text) in PASSTHROUGH.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _passthrough(name: str, argv: list[str], debug: bool) -> int:
    import importlib

    module_name, _ = PASSTHROUGH[name]
    prog = f"optimum-rku {name}"
    if name == "testbed":
        if not argv or argv[0] in ("-h", "--help"):
            print(f"usage: {prog} train [options]  (options: `{prog} train --help`)")
            return 0 if argv else 2
        if argv[0] != "train":
            print(f"{prog}: error: unknown testbed command {argv[0]!r}; allowed: train", file=sys.stderr)
            return 2
        argv = argv[1:]
    try:
        module = importlib.import_module(module_name)
        return int(module.main(argv) or 0)
    except SystemExit as exit_:  # argparse inside the delegate: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        code = 2 if isinstance(err, INPUT_ERRORS) else 1
        print(f"{prog}: error: {_message(err)}", file=sys.stderr, flush=True)
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `optimum-rku` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        debug = "--debug" in argv
        return _passthrough(argv[0], [a for a in argv[1:] if a != "--debug"], debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return run_command(args.command, args)
