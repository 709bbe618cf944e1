"""Train a segmentation model: ``python train.py [group=option ...] [key=value ...]``.

Examples: ``python train.py``, ``python train.py aug=kornia_gpu encoder=effnet_b4``,
``python train.py --help``. The work is done by :mod:`nailseg.train`, the command line by
:mod:`nailseg.commands.train`.
"""

import sys

from nailseg.commands.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
