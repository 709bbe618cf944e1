"""The ``nailseg`` console script: one small dispatcher over :data:`nailseg.commands.COMMANDS`.

Each subcommand lives in its own module under :mod:`nailseg.commands` with the same entry
function, ``main(argv: list[str]) -> int``; exit statuses are those of
:func:`nailseg.errors.report`.
"""

from __future__ import annotations

import importlib
import sys

from nailseg.commands import COMMANDS
from nailseg.errors import EXIT_ERROR
from nailseg.runs.stop import run_command


def usage() -> str:
    lines = ["usage: nailseg COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`nailseg COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nailseg: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_ERROR
    if name == "train":  # stop signals remembered from here on, as python train.py does
        return run_command(lambda: importlib.import_module("nailseg.commands.train").main(rest))
    module = importlib.import_module(f"nailseg.commands.{COMMANDS[name][0]}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
