"""``nailseg summary SWEEP_DIR``: write a multirun's ``summary.csv``, ``summary.md`` and
``summary.png`` (again) from its jobs' records (see :mod:`nailseg.runs.summary`); works on a
sweep that is still running or that crashed."""

from __future__ import annotations

import argparse

from nailseg.commands import command
from nailseg.runs.summary import SUMMARY_MD, SUMMARY_PNG, write_summary


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg summary",
        description="Write a multirun's summary.csv, summary.md and summary.png from its jobs.",
    )
    parser.add_argument("sweep_dir", help="the sweep dir of a multirun (runs/multirun/DATE/TIME)")
    args = parser.parse_args(argv)
    path = write_summary(args.sweep_dir)
    print((path.parent / SUMMARY_MD).read_text(), end="")
    shown = [path.name, SUMMARY_MD] + (
        [SUMMARY_PNG] if (path.parent / SUMMARY_PNG).is_file() else []
    )
    print(f"Wrote {', '.join(shown)} in {path.parent}")
    return 0
