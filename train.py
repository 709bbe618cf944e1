"""Train a segmentation model: ``python train.py [group=option ...] [key=value ...]``.

Examples: ``python train.py``, ``python train.py aug=kornia_gpu encoder=effnet_b4``,
``python train.py --help``. The work is done by :mod:`nailseg.train`, the command line by
:mod:`nailseg.commands.train`.
"""

import sys

from nailseg.runs.stop import run_command


def _main() -> int:
    # Imported here, inside run_command: a Ctrl-C or SIGTERM while torch and Lightning import is
    # one line and exit 130/143, not a traceback.
    from nailseg.commands.train import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(run_command(_main))
