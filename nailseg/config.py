"""Where the config tree lives, and composing it outside of ``hydra.main`` (CLI tools, tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from nailseg import classes

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
PRIMARY_CONFIG = "train"


def register_resolvers() -> None:
    """Register ``${nailseg_root:}`` so configs can place data and runs next to the repo, and the
    resolvers that derive what follows from ``data.classes`` (see :mod:`nailseg.classes`)."""
    resolvers = {
        "nailseg_root": lambda: str(REPO_ROOT),
        "nailseg_num_classes": classes.num_classes,
        "nailseg_score": classes.score_metric,
        "nailseg_loss_mode": classes.loss_mode,
        "nailseg_checkpoint_name": classes.checkpoint_name,
        "nailseg_folder_classes": classes.folder_classes,
        "nailseg_synthetic_classes": classes.synthetic_classes,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def compose_config(
    overrides: Sequence[str] = (),
    config_dir: Path | str = CONF_DIR,
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose the training config the way ``train.py`` would, without starting a run.

    Examples:
        >>> cfg = compose_config(["encoder=resnet34"])
        >>> cfg.encoder.name
        'resnet34'
    """
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return compose(
            config_name=PRIMARY_CONFIG,
            overrides=list(overrides),
            return_hydra_config=return_hydra_config,
        )


def register_schemas() -> None:
    """Put the augmentation policy's defaults (the :class:`~nailseg.augment.policy.AugPolicy`
    dataclass, the one place they are written) in Hydra's ConfigStore as ``aug/policy/defaults``.

    Every policy file starts from it (``defaults: [defaults, _self_]``), so each policy key exists
    in the composed config and ``aug.policy.affine.degrees=30`` is a plain override for any
    policy, while the values are written once, in Python. The policy module is the config
    schema of its group, so this layer may import it (see docs/ARCHITECTURE.md).
    """
    from hydra.core.config_store import ConfigStore

    from nailseg.augment.policy import policy_defaults

    ConfigStore.instance().store(group="aug/policy", name="defaults", node=policy_defaults())


# Once, when the package's config layer is first imported (train.py and every command import it).
register_resolvers()
register_schemas()
