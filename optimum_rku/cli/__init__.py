"""`optimum-rku` command line (also registered as `optimum-cli rku ...`): prune, eval, recover, push, benchmark, demo.

`registry` holds the commands (one module each: `prune`, `eval`, `recover`, `push`, `import_gguf`, `benchmark`; `demo`
and `testbed train` are passed through); `args` the shared parser pieces, `runtime` what commands share at run time.
Parsers only import `argparse` and `optimum_rku.config`; torch, transformers and the Hub client are imported inside
each command's `run`, so `--help` is instant. Bad arguments or inputs exit with code 2 and one line on stderr;
other failures exit with code 1 and one line; `--debug` shows the traceback instead.
"""

from optimum_rku.cli.args import config_from_args
from optimum_rku.cli.registry import COMMANDS, add_arguments, build_parser, main, run_command

__all__ = ["COMMANDS", "add_arguments", "build_parser", "config_from_args", "main", "run_command"]
