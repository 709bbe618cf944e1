"""``nailseg check-data [overrides]``: run the data check that training runs first, and print it.

Examples:
    nailseg check-data data=folder data.images=photos/ data.masks=masks/
    nailseg check-data data=nails data.root=/data/nails data.on_invalid=skip

Exit status: 0 when the data can be trained on (with ``on_invalid=skip``: after dropping the
listed pairs), 1 on a data or config problem.
"""

from __future__ import annotations

import sys
import tempfile

from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf.errors import OmegaConfBaseException

from nailseg.config import compose_config
from nailseg.errors import NailsegError, user_error

USAGE = __doc__.split("\n\n")[0] + "\n\nusage: nailseg check-data [hydra overrides, e.g. data=...]"


def cli(argv: list[str]) -> int:
    """Compose the config from ``argv`` overrides, build the DataModule and check its data."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        # ${hydra:...} resolves only inside hydra.main; the check writes nothing to a run dir.
        try:
            cfg = compose_config([f"paths.output_dir={tmp}", *argv])
            # The augmentation backend plays no part in the check.
            datamodule = instantiate(cfg.data, _convert_="all")
            datamodule.setup("fit")
        except NailsegError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except (HydraException, OmegaConfBaseException) as err:
            print(f"error: {user_error(err) or err}", file=sys.stderr)
            return 1
    print(datamodule.report.format(full=True))
    print(
        "  split: "
        + ", ".join(f"{len(v)} {k}" for k, v in datamodule.splits.items() if v)
        + f" ({datamodule.split_folder})"
    )
    return 0
