"""The ``nailseg`` console script: one small dispatcher over subcommands.

Each subcommand lives in its own module with a ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("nailseg.train", "train with Hydra overrides (same as python train.py)"),
    "check-data": ("nailseg.data.check", "validate a data set and print a report"),
    "preview": ("nailseg.preview", "write a PNG grid of augmented samples with their masks"),
    "diff": ("nailseg.runs.diff", "show what differs between two runs"),
    "rerun": ("nailseg.runs.rerun", "run a recorded run again from its conf/ snapshot"),
}


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
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"nailseg: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
