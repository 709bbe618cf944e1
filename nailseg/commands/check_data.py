"""``nailseg check-data [overrides]``: run the data check that training runs first, and print it.

Examples:
    nailseg check-data data=folder data.images=photos/ data.masks=masks/
    nailseg check-data data=nails data.root=/data/nails data.on_invalid=skip

Exit status: 0 when the data can be trained on (with ``on_invalid=skip``: after dropping the
listed pairs), 2 on a data or config problem.
"""

from __future__ import annotations

import tempfile

from nailseg.build import instantiate_node
from nailseg.commands import command, compose
from nailseg.data import datamodule_node

USAGE = __doc__.split("\n\n")[0] + "\n\nusage: nailseg check-data [hydra overrides, e.g. data=...]"


@command
def main(argv: list[str]) -> int:
    """Compose the config from ``argv`` overrides, build the DataModule and check its data."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        # ${hydra:...} resolves only inside hydra.main; the check writes nothing to a run dir.
        cfg = compose([f"paths.output_dir={tmp}", *argv])
        # The augmentation backend plays no part in the check.
        datamodule = instantiate_node(datamodule_node(cfg.data), "datamodule")
        datamodule.setup("fit")
    print(datamodule.report.format(full=True))
    print(
        "  split: "
        + ", ".join(f"{len(v)} {k}" for k, v in datamodule.splits.items() if v)
        + f" ({datamodule.split_folder})"
    )
    for name, absent in datamodule.absent_classes.items():
        print(f"  warning: the {name} split holds no pixel of class(es) {', '.join(absent)}")
    height, width = datamodule.image_size
    how = " (data.image_size=auto)" if datamodule.size_auto else ""
    print(f"  training size: {width}x{height}{how}")
    return 0
