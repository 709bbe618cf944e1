"""The ``nailseg`` console script: one small dispatcher over subcommands."""

from __future__ import annotations

import sys

USAGE = """usage: nailseg COMMAND [ARGS]

commands:
  train [overrides...]    train with Hydra overrides (same as python train.py)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from nailseg.train import main as train_main

        sys.argv = [f"{sys.argv[0]} train", *rest]
        train_main()
        return 0
    print(f"nailseg: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
