"""Registers `optimum-cli rku {prune,eval,recover,push,import-gguf,export,benchmark}` through Optimum's `optimum.commands.register`.

`optimum-cli` imports every module of this namespace at startup and registers its `REGISTER_COMMANDS`. Only the
parsers are built here (argparse + `optimum_rku.cli`); torch and the rest load when a command runs.
"""

import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


class _RKUSubcommand(BaseOptimumCLICommand):
    """One `optimum-cli rku <name>` command backed by `optimum_rku.cli` (same flags as `optimum-rku <name>`)."""

    NAME = ""

    def parse_args(self, parser):  # called on the instance by BaseOptimumCLICommand.__init__
        """Add the flags of this subcommand (never break `optimum-cli` startup if optimum-rku cannot be imported)."""
        try:
            from optimum_rku.cli import add_arguments
        except Exception as err:  # optimum-cli builds every parser at startup: other commands must keep working
            parser.description = f"unavailable: optimum-rku failed to import ({type(err).__name__}: {err})"
            return
        add_arguments(self.NAME, parser)

    def run(self):
        """Run the subcommand; failures print one line and exit with code 2 (bad input) or 1."""
        from optimum_rku.cli import run_command

        code = run_command(self.NAME, self.args, prog=f"optimum-cli rku {self.NAME}")
        if code:
            sys.exit(code)


def _subcommand(name: str, help_text: str) -> CommandInfo:
    cls = type(f"RKU{name.capitalize()}Command", (_RKUSubcommand,), {"NAME": name, "__doc__": help_text})
    return CommandInfo(name=name, help=help_text, subcommand_class=cls)


try:  # the help lines live with the commands (optimum_rku.cli.registry); parsers only import argparse there
    from optimum_rku.cli.registry import COMMANDS

    _HELP = {name: command.help for name, command in COMMANDS.items()}
    _UNAVAILABLE = ""
except Exception as err:  # optimum-cli imports every register module at startup: other commands must keep working
    _HELP = {}
    _UNAVAILABLE = f" (unavailable: optimum-rku failed to import, {type(err).__name__}: {err})"


class RKUCommand(BaseOptimumCLICommand):
    """`optimum-cli rku`: structured pruning of reasoning LLMs with Relative Kinetic Utility (optimum-rku)."""

    COMMAND = CommandInfo(
        name="rku", help="Structured pruning of reasoning LLMs with RKU (optimum-rku)" + _UNAVAILABLE
    )
    SUBCOMMANDS = tuple(_subcommand(name, text) for name, text in _HELP.items())


REGISTER_COMMANDS = [RKUCommand]
