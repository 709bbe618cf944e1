"""The run record: ``run.json``, ``config.resolved.yaml`` and a snapshot of ``conf/``.

This module is the one place that knows the record's format; everything that reads records
(diff, rerun, resume) goes through it.

In a distributed run (``trainer=ddp``) every process runs the same script; only global rank 0
writes the record (:func:`is_rank_zero`), the others keep theirs in memory.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nailseg.config import CONF_DIR, REPO_ROOT
from nailseg.errors import ConfigError

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
RESOLVED_CONFIG = "config.resolved.yaml"
CONF_SNAPSHOT = "conf"
VERSIONED_PACKAGES = (
    "nailseg",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "kornia",
    "segmentation-models-pytorch",
    "albumentations",
    "hydra-core",
    "omegaconf",
    "timm",
    "numpy",
)


def is_rank_zero() -> bool:
    """Whether this process writes records: global rank 0, or not distributed at all.

    Lightning sets ``rank_zero_only.rank`` from the ``RANK``/``LOCAL_RANK`` environment it starts
    DDP children with (at import), and again when its strategy sets up. Imported here: Hydra
    imports the sweeper plugin that uses this module at every start, even for ``--help``.
    """
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the previous file, never half of a new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write ``config.resolved.yaml`` (every interpolation resolved), atomically."""
    path = run_dir / RESOLVED_CONFIG
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    os.replace(tmp, path)


def read_run(run_dir: Path | str) -> dict[str, Any]:
    """The ``run.json`` of a run dir, as a dict."""
    path = Path(run_dir) / RUN_JSON
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"Cannot read the run record {path}: {err.strerror}.") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"The run record {path} is not valid JSON ({err}).") from err


def find_run_dir(path: Path | str) -> Path:
    """The run dir that ``path`` names: a single-run dir, a multirun job dir, or its ``run.json``.

    Raises:
        ConfigError: ``path`` is not a run dir; for a multirun sweep dir the message lists its jobs.
    """
    run_dir = Path(path).expanduser()
    if run_dir.name == RUN_JSON and run_dir.is_file():
        run_dir = run_dir.parent
    if (run_dir / RUN_JSON).is_file():
        return run_dir.resolve()
    if not run_dir.is_dir():
        raise ConfigError(
            f"Run dir {path} does not exist. Pass a folder under runs/ that holds {RUN_JSON}."
        )
    jobs = sorted(p.parent.name for p in run_dir.glob(f"*/{RUN_JSON}"))
    if jobs:
        raise ConfigError(
            f"{path} is a multirun sweep dir, not one run. Pass one of its job dirs: "
            + ", ".join(str(run_dir / j) for j in jobs[:10])
            + (" ..." if len(jobs) > 10 else "")
        )
    raise ConfigError(
        f"{path} is not a run dir: it has no {RUN_JSON}. Pass a folder under runs/"
        " that a training run wrote."
    )


def read_config(run_dir: Path | str) -> DictConfig:
    """The resolved config a run trained with (``config.resolved.yaml``)."""
    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: the run dir is incomplete, so its config is unknown."
        )
    return OmegaConf.load(path)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit, dirtiness and a hash of the uncommitted diff (``None`` outside a git checkout)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=20
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
        untracked = git("ls-files", "--others", "--exclude-standard")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff_sha256": None}
    import hashlib

    return {
        "commit": commit,
        "dirty": bool(diff or untracked),
        "diff_sha256": hashlib.sha256((diff + untracked).encode()).hexdigest()
        if diff or untracked
        else None,
    }


def device_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "platform": platform.platform(),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RunRecord:
    """Writes a run's record at start (status ``running``) and updates it when the run ends."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir, self.data = run_dir, data
        self._t0 = time.monotonic()

    @classmethod
    def start(
        cls, run_dir: Path | str, cfg: DictConfig, hydra: dict[str, Any] | None = None, **extra: Any
    ) -> RunRecord:
        """Record what the run is before it starts.

        Args:
            run_dir: the run's own directory.
            cfg: the composed config (resolved here).
            hydra: ``{"choices": ..., "overrides": ..., "config_dir": ...}`` from Hydra, when run
                through Hydra; without it choices and overrides are recorded as ``None``
                (unknown, so the run cannot be re-run) and ``conf/`` is the snapshot.
            extra: more top-level fields, e.g. ``rerun_of``.
        """
        run_dir = Path(run_dir)
        hydra = hydra or {}
        if not is_rank_zero():
            # A DDP child: rank 0 has written the record of this run; keep a copy in memory.
            return cls(run_dir, {"status": "running", "run_dir": str(run_dir.resolve())})
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, cfg)
        snapshot = run_dir / CONF_SNAPSHOT
        if not snapshot.exists():
            shutil.copytree(hydra.get("config_dir") or CONF_DIR, snapshot, symlinks=False)
        data = {
            "status": "running",
            "started_at": _now(),
            "ended_at": None,
            "duration_s": None,
            "run_dir": str(run_dir.resolve()),
            "choices": hydra.get("choices"),
            "overrides": hydra.get("overrides"),
            "seed": cfg.get("seed"),
            "git": git_state(),
            "versions": package_versions(),
            "device": device_info(),
            "data": {},
            "metrics": {},
            "best_checkpoint": None,
            "last_checkpoint": None,
            "error": None,
            **extra,
        }
        record = cls(run_dir, data)
        record.save()
        return record

    @classmethod
    def reopen(
        cls,
        run_dir: Path | str,
        relocate: Callable[[Any], Any] | None = None,
        **resume: Any,
    ) -> RunRecord:
        """Continue an interrupted run's record; ``resume`` fields go to its ``resumes`` list.

        Args:
            run_dir: the run's dir.
            relocate: for a run that was moved or copied, moves the recorded paths (run dir,
                checkpoints, earlier resumes) to where it is now.
            resume: fields of this resume's entry.
        """
        run_dir = Path(run_dir)
        data = read_run(run_dir)
        if relocate is not None:
            data = relocate(data)
        data.setdefault("resumes", []).append({"at": _now(), **resume})
        data.update(status="running", ended_at=None, error=None)
        data.pop("resume_command", None)  # an interruption's; set again if this one is stopped
        record = cls(run_dir, data)
        record.save()
        return record

    def _duration(self) -> float:
        """Seconds since the run started; across resumes, wall time from the first start."""
        if self.data.get("resumes"):
            started = dt.datetime.fromisoformat(self.data["started_at"])
            return round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 3)
        return round(time.monotonic() - self._t0, 3)

    def save(self) -> None:
        """Write ``run.json`` (rank 0 only: see :func:`is_rank_zero`)."""
        if is_rank_zero():
            write_json(self.run_dir / RUN_JSON, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def finish(
        self,
        status: str,
        metrics: dict[str, float] | None = None,
        error: str | None = None,
        **fields: Any,
    ) -> None:
        self.data.update(fields)
        self.data.update(
            status=status,
            ended_at=_now(),
            duration_s=self._duration(),
            error=error,
        )
        if metrics is not None:
            self.data["metrics"] = {k: _finite(float(v)) for k, v in sorted(metrics.items())}
        self.save()
