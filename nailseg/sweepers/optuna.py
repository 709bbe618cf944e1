"""An Optuna search as a Hydra sweeper: ``python train.py -m hparams_search=NAME``.

Why our own: the official ``hydra-optuna-sweeper`` 1.3 pins ``optuna<3``, its SQLite storage
fails with SQLAlchemy 2, and it cannot prune; its successor needs Hydra 1.4. This one drives
Optuna's ask/tell interface and hands each trial to Hydra's launcher as one job.

The search (``hydra.sweeper`` in ``conf/hparams_search/*.yaml``):

- ``params``: the search space, in Hydra's override grammar (the same as on the command line,
  where ``key=...`` adds to or replaces a ``params`` entry): ``interval(1e-4, 1e-2)`` a float,
  ``tag(log, interval(1e-4, 1e-2))`` on a log scale, ``int(interval(8, 64))`` an integer,
  ``range(1, 5)`` the integers 1..4, ``choice(dice, bce_dice)`` or ``dice,bce_dice`` one of the
  values; a plain value is fixed for every trial.
- ``n_trials``: the total number of trials of the study. Running the same command again with the
  same ``hydra.sweep.dir`` continues the study (finished trials are not run again) until it has
  that many. A trial whose job the search did not see end (the search was killed) is marked
  ``FAIL`` and does not count; with ``requeue_failed: true`` its parameters are run again as a
  new trial.
- ``storage``: ``null`` for ``sqlite:///SWEEP_DIR/optuna.db``, any SQLAlchemy URL, or
  ``journal:PATH`` for Optuna's journal file (better on shared/NFS file systems).
- ``sampler`` / ``pruner``: config nodes with a ``_target_`` (``optuna.samplers.TPESampler``,
  ``optuna.pruners.MedianPruner``, ``optuna.pruners.HyperbandPruner``, ...). The sampler's seed
  derives from the run's ``seed`` and the number of trials so far, so a resumed search does not
  replay the first trials' suggestions.
- ``direction``: ``maximize`` (the default, for ``val/iou``) or ``minimize``: the
  ``optimized_metric`` that ``train.py`` returns.
- ``n_jobs``: trials asked at once and handed to the launcher as one batch (a parallel launcher,
  ``hydra/launcher=joblib``, runs them side by side; prefer ``journal:`` storage then).

Each trial's job gets ``++callbacks.optuna_pruning`` (:class:`nailseg.runs.pruning.OptunaPruning`),
which reports ``optimized_metric`` after each validation and stops a trial the pruner prunes.
The job's ``run.json`` says ``completed``, ``pruned`` or ``failed``; Optuna is told ``COMPLETE``
(with the returned value), ``PRUNED`` or ``FAIL``. A failed job does not stop the search.
Job numbers (run dirs ``SWEEP_DIR/N``) are the trial numbers, so a resumed search never reuses a
run dir. After each trial ``SWEEP_DIR/optuna_trials.csv`` holds every trial (number, state,
value, parameters); the search ends with a line naming the best trial.

Hydra instantiates a sweeper only from a class in the ``hydra_plugins`` namespace (see
``Plugins._instantiate`` in ``hydra/core/plugins.py``), so the ``_target_`` is
``hydra_plugins.nailseg_optuna.OptunaSweeper``, a thin subclass of :class:`OptunaSweeper`.
Optuna is imported only when a search runs: Hydra imports the plugin at every start.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from nailseg.errors import ConfigError
from nailseg.runs.record import RUN_JSON, read_run, write_json

log = logging.getLogger(__name__)

TRIALS_CSV = "optuna_trials.csv"
# Trial user attributes written by the search.
INTERRUPTED_ATTR = "interrupted"  # the search stopped while the trial ran: not counted
RUN_DIR_ATTR = "run_dir"
SPACE_ATTR = "search_space"  # study attribute: the space the study was started with


class SearchConfigError(ConfigError, CompactHydraException):
    """A search config that cannot run; Hydra prints its message alone, without a traceback."""


# Characters a value may hold unquoted in Hydra's override grammar (a subset, to be safe).
_PLAIN = re.compile(r"^[A-Za-z0-9_./:+-]+$")


def override_value(value: Any) -> str:
    """``value`` as it is written on the right of ``key=`` in a Hydra override.

    Examples:
        >>> [override_value(v) for v in (0.001, 3, True, None, "bce_dice", "it's")]
        ['0.001', '3', 'true', 'null', 'bce_dice', "'it\\\\'s'"]
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override (``interval``, ``range``, ``choice``).

    Examples:
        >>> [o] = OverridesParser.create().parse_overrides(["lr=tag(log, interval(1e-4, 1e-2))"])
        >>> distribution(o)
        FloatDistribution(high=0.01, log=True, low=0.0001, step=None)
    """
    import optuna.distributions as d

    value = override.value()
    key = override.get_key_element()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise SearchConfigError(f"{key}={override.input_line.split('=', 1)[1]} is empty.")
        if all(isinstance(v, int) for v in values) and "log" not in value.tags:
            return d.IntDistribution(values[0], values[-1], step=int(value.step or 1))
        return d.CategoricalDistribution(values)
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution(list(override.sweep_iterator()))
    raise SearchConfigError(
        f"{override.input_line}: an Optuna search takes interval(...), range(...) or"
        " choice(...) (or a,b,c) for a searched key."
    )


def search_space(params: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The searched keys' distributions and the fixed overrides, from ``key=value`` strings
    (later ones replace earlier ones with the same key)."""
    parsed = {}
    try:
        for override in OverridesParser.create().parse_overrides(list(params)):
            parsed[override.get_key_element()] = override
    except Exception as err:  # noqa: BLE001 - Hydra's grammar error, as one line
        raise SearchConfigError(f"The search space does not parse: {err}") from None
    space = {k: distribution(o) for k, o in parsed.items() if o.is_sweep_override()}
    fixed = [o.input_line for o in parsed.values() if not o.is_sweep_override()]
    return space, fixed


def _node(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


class OptunaSweeper(Sweeper):
    """A Hydra sweeper that runs an Optuna study (see the module docstring for the config)."""

    def __init__(
        self,
        n_trials: int = 20,
        direction: str = "maximize",
        study_name: str = "nailseg",
        storage: str | None = None,
        sampler: Any = None,
        pruner: Any = None,
        params: Any = None,
        n_jobs: int = 1,
        requeue_failed: bool = False,
    ) -> None:
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise SearchConfigError(
                f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be 1 or more."
            )
        if direction not in ("maximize", "minimize"):
            raise SearchConfigError(
                f"hydra.sweeper.direction={direction} is not maximize or minimize."
            )
        self.n_trials, self.n_jobs, self.direction = int(n_trials), int(n_jobs), direction
        self.study_name, self.storage = study_name, storage
        self.sampler_node, self.pruner_node = _node(sampler), _node(pruner)
        for key, node in (("sampler", self.sampler_node), ("pruner", self.pruner_node)):
            if node is not None and not (isinstance(node, dict) and "_target_" in node):
                raise SearchConfigError(
                    f"hydra.sweeper.{key} must be a config node with a _target_ (and"
                    " hydra.sweeper._recursive_: false, so that the sweeper builds it), or null;"
                    f" got {node!r}."
                )
        self.params = {str(k): str(v) for k, v in (_node(params) or {}).items()}
        self.requeue_failed = bool(requeue_failed)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.exhausted = False  # the sampler has nothing left to try

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- the study ---------------------------------------------------------------------------

    def _storage_spec(self, sweep_dir: Path) -> str:
        if self.storage:
            return str(self.storage)
        return f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"

    def _sampler(self, n_trials_so_far: int) -> Any:
        import inspect

        import numpy as np
        from hydra.utils import get_class, instantiate

        if not self.sampler_node:
            return None
        assert self.config is not None
        # A different seed for each start of the search: a resume must not replay the first
        # start's suggestions, yet the same search started over draws the same ones.
        seed = int(
            np.random.SeedSequence([int(self.config.seed), n_trials_so_far]).generate_state(1)[0]
        )
        target = get_class(self.sampler_node["_target_"])
        takes_seed = "seed" in inspect.signature(target).parameters
        return instantiate(self.sampler_node, **({"seed": seed} if takes_seed else {}))

    def _open_study(self, spec: str, space: dict[str, Any]) -> Any:
        import optuna

        # Imported here: Hydra imports this plugin at every start, and pruning imports Lightning.
        from nailseg.runs.pruning import PRUNER_ATTR, build_pruner, open_storage

        storage = open_storage(spec)
        study = optuna.create_study(
            storage=storage,
            study_name=self.study_name,
            direction=self.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise SearchConfigError(
                f"Study {self.study_name!r} in {spec} was started to"
                f" {study.direction.name.lower()}, not {self.direction}: use a new"
                " hydra.sweep.dir or hydra.sweeper.study_name."
            )
        described = {k: repr(v) for k, v in sorted(space.items())}
        recorded = study.user_attrs.get(SPACE_ATTR)
        if recorded is not None and recorded != described:
            changed = sorted(set(recorded.items()) ^ set(described.items()))
            raise SearchConfigError(
                f"Study {self.study_name!r} in {spec} was started with another search space"
                f" ({', '.join(sorted({k for k, _ in changed}))} differ): resume it with the same"
                " params, or use a new hydra.sweep.dir or hydra.sweeper.study_name."
            )
        study.set_user_attr(SPACE_ATTR, described)
        study.set_user_attr(PRUNER_ATTR, self.pruner_node)
        study.sampler = self._sampler(len(study.trials)) or study.sampler
        study.pruner = build_pruner(self.pruner_node)
        return study

    def _finish(self, study: Any, number: int, *args: Any, **kwargs: Any) -> None:
        """``study.tell``. A sampler that has tried every combination (``GridSampler``,
        ``BruteForceSampler``) calls ``study.stop()`` from ``tell``, which Optuna allows only
        inside ``optimize``; the trial's state is stored all the same (in a ``finally``), and here
        it ends the search."""
        try:
            study.tell(number, *args, **kwargs)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise
            log.info("The sampler has tried every combination: the search ends")
            self.exhausted = True

    def _abandon(self, study: Any, trial: Any, reason: str) -> None:
        """Mark a trial whose job the search did not see end as ``FAIL`` (not counted); with
        ``requeue_failed`` queue its parameters as a new trial."""
        from optuna.trial import TrialState

        # A FrozenTrial (a trial an earlier process left) has no setter; Optuna's own
        # RetryFailedTrialCallback also writes through the study's storage.
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, reason)
        self._finish(study, trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if self.requeue_failed and trial.params:
            study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
            log.info("Trial %d's parameters are queued again (requeue_failed)", trial.number)
        run_dir = trial.user_attrs.get(RUN_DIR_ATTR)
        if run_dir and (Path(run_dir) / RUN_JSON).is_file():
            record = read_run(run_dir)
            if record.get("status") == "running":  # killed: nothing else will ever finish it
                record.update(status="failed", error=f"Optuna search: {reason}")
                write_json(Path(run_dir) / RUN_JSON, record)

    def _fail_stale(self, study: Any) -> None:
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.warning("Trial %d was left running by an earlier search: marked FAIL", trial.number)
            self._abandon(study, trial, "the search stopped while it ran (killed?)")

    @staticmethod
    def counted(study: Any) -> int:
        """Finished trials that count towards ``n_trials`` (not those cut off by a stop)."""
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return sum(
            1
            for t in study.get_trials(deepcopy=False, states=done)
            if INTERRUPTED_ATTR not in t.user_attrs
        )

    # -- one batch of trials -----------------------------------------------------------------

    def _job_overrides(self, trial: Any, fixed: list[str], spec: str) -> list[str]:
        assert self.config is not None
        node = "++callbacks.optuna_pruning"
        return [
            *fixed,
            *(f"{k}={override_value(v)}" for k, v in trial.params.items()),
            f"{node}._target_=nailseg.runs.pruning.OptunaPruning",
            f"{node}.storage={override_value(spec)}",
            f"{node}.study_name={override_value(self.study_name)}",
            f"{node}.trial_number={trial.number}",
            f"{node}.monitor={override_value(str(self.config.optimized_metric))}",
        ]

    def _launch(self, batch: list[list[str]], numbers: list[int]) -> list[JobReturn]:
        """Launch a batch; job numbers are trial numbers (consecutive when asked together)."""
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return list(self.launcher.launch(batch, initial_job_idx=numbers[0]))
        returns: list[JobReturn] = []
        for overrides, number in zip(batch, numbers, strict=True):
            returns.extend(self.launcher.launch([overrides], initial_job_idx=number))
        return returns

    def _tell(self, study: Any, trial: Any, ret: JobReturn) -> str:
        from optuna.trial import TrialState

        metric = str(self.config.optimized_metric) if self.config is not None else "metric"
        run_dir = trial.user_attrs.get(RUN_DIR_ATTR)
        status = None
        if run_dir and (Path(run_dir) / RUN_JSON).is_file():
            status = read_run(run_dir).get("status")
        if ret.status != JobStatus.COMPLETED:
            self._finish(study, trial.number, state=TrialState.FAIL)
            return "FAIL"
        if status == "pruned" or "pruned_at_epoch" in trial.user_attrs:
            self._finish(study, trial.number, state=TrialState.PRUNED)
            return "PRUNED"
        value = ret.return_value
        if value is None or not math.isfinite(float(value)):
            log.warning("Trial %d returned %s=%s: marked FAIL", trial.number, metric, value)
            self._finish(study, trial.number, state=TrialState.FAIL)
            return "FAIL"
        self._finish(study, trial.number, float(value))
        return f"COMPLETE {metric}={float(value):.4f}"

    # -- the sweep ---------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        if not space:
            raise SearchConfigError(
                "The Optuna search has no searched key: give hydra.sweeper.params (or a"
                " command-line key=interval(...)/choice(...))."
            )
        spec = self._storage_spec(sweep_dir)
        study = self._open_study(spec, space)
        self._fail_stale(study)
        log.info(
            "Optuna search: %d of %d trials done, study %r in %s",
            self.counted(study),
            self.n_trials,
            self.study_name,
            spec,
        )
        # Where a job's run dir will be, known before it starts only for the default subdir;
        # replaced by Hydra's own output dir once the job has run.
        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        returns: list[JobReturn] = []
        self.exhausted = False
        while not self.exhausted and (left := self.n_trials - self.counted(study)) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            if subdir == "${hydra.job.num}":
                for trial in trials:
                    trial.set_user_attr(RUN_DIR_ATTR, str(sweep_dir / str(trial.number)))
            batch = [self._job_overrides(t, fixed, spec) for t in trials]
            try:
                results = self._launch(batch, [t.number for t in trials])
            except BaseException:
                for trial in trials:  # Ctrl-C or a crash of the launcher: the search stops
                    self._abandon(study, trial, "the search was stopped while it ran")
                self._write_trials(study, sweep_dir)
                raise
            for trial, ret in zip(trials, results, strict=True):
                self._record_run_dir(trial, ret)
                outcome = self._tell(study, trial, ret)
                log.info("Trial %d: %s %s", trial.number, outcome, trial.params)
            self._write_trials(study, sweep_dir)
            returns.extend(results)
        self._write_trials(study, sweep_dir)
        self._report_best(study, sweep_dir)
        return returns

    @staticmethod
    def _record_run_dir(trial: Any, ret: JobReturn) -> None:
        """The job's own output dir, as Hydra made it (the subdir pattern may be anything)."""
        hydra_cfg = ret.hydra_cfg
        out = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir") if hydra_cfg else None
        if out:
            trial.set_user_attr(RUN_DIR_ATTR, str(out))

    @staticmethod
    def _write_trials(study: Any, sweep_dir: Path) -> None:
        frame = study.trials_dataframe(
            attrs=("number", "state", "value", "params", "user_attrs", "datetime_start", "duration")
        )
        frame.to_csv(sweep_dir / TRIALS_CSV, index=False)

    def _report_best(self, study: Any, sweep_dir: Path) -> None:
        metric = str(self.config.optimized_metric) if self.config is not None else "value"
        try:
            best = study.best_trial
        except ValueError:
            line = f"Optuna search: no trial completed (trials: {sweep_dir / TRIALS_CSV})"
        else:
            params = " ".join(f"{k}={override_value(v)}" for k, v in best.params.items())
            line = (
                f"Best trial #{best.number}: {metric}={best.value:.4f} with {params}"
                f" (run dir {best.user_attrs.get(RUN_DIR_ATTR)}; all trials: "
                f"{sweep_dir / TRIALS_CSV})"
            )
        log.info("%s", line)
        print(line)
