"""``nailseg diff RUN_A [RUN_B] [--all] [--json]``: what differs between two runs, or a run and
today's defaults (see :mod:`nailseg.runs.diff`). Exit status 0 equal, 1 differ, 2 error, like
``diff``."""

from __future__ import annotations

import argparse
import json

from nailseg.commands import command
from nailseg.runs.diff import (
    compare,
    configs_differ,
    format_table,
    jsonable,
    load_defaults_side,
    load_run_side,
)


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg diff",
        description="Show what differs between two runs (or a run and the current defaults).",
    )
    parser.add_argument("run_a", help="a run dir (single run, or a job dir of a multirun)")
    parser.add_argument("run_b", nargs="?", help="another run dir; default: today's conf/ defaults")
    parser.add_argument("--all", action="store_true", help="show equal keys too")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    a = load_run_side(args.run_a)
    b = load_run_side(args.run_b) if args.run_b else load_defaults_side()
    diff = compare(a, b, show_all=args.all)
    print(json.dumps(jsonable(diff), indent=2) if args.json else format_table(diff, a, b))
    return 1 if configs_differ(a, b) else 0
