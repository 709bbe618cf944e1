"""The Optuna search (``train.py -m hparams_search=NAME``): resume after a kill, pruning, the
example search config. Real Optuna, Hydra and Lightning; tiny synthetic runs on one thread."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from optuna.trial import TrialState

from nailseg.config import REPO_ROOT, compose_config
from nailseg.runs.record import read_run
from nailseg.sweepers.optuna import (
    INTERRUPTED_ATTR,
    OptunaSweeper,
    SearchConfigError,
    search_space,
)
from tests.conftest import FAST_SYNTHETIC, ONE_THREAD_ENV, train_py

SEARCH = "lr_loss_aug"
TINY = (
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    *FAST_SYNTHETIC,
    "trainer=debug",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "test_after_fit=false",
)


def search_args(sweep_dir: Path, data_dir: Path, *more: str) -> list[str]:
    return [
        "-m",
        f"hparams_search={SEARCH}",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.data_dir={data_dir}",
        *TINY,
        *more,
    ]


def load(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=SEARCH, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def status_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_search_killed_in_its_third_trial_resumes_to_four(tmp_path: Path) -> None:
    sweep, data = tmp_path / "sweep", tmp_path / "data"
    args = search_args(sweep, data, "hydra.sweeper.n_trials=4")
    # A real kill (SIGKILL: nothing gets to clean up) while the third trial runs, two done.
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train.py"), *args],
        cwd=REPO_ROOT,
        env=ONE_THREAD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while status_of(sweep / "2") != "running":
            assert proc.poll() is None, "the search ended before its third trial started"
            assert time.monotonic() < deadline, "the third trial did not start in time"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = load(sweep).trials
    states = [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    assert [t.state for t in before] == states
    started = {n: read_run(sweep / str(n))["started_at"] for n in (0, 1)}

    again = train_py(*args, env=ONE_THREAD_ENV)
    assert again.returncode == 0, again.stderr[-3000:]

    trials = load(sweep).trials
    killed = [t for t in trials if INTERRUPTED_ATTR in t.user_attrs]
    counted = [t for t in trials if INTERRUPTED_ATTR not in t.user_attrs]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
    # The trial the kill cut off is FAIL (not counted), and so is its run.json.
    assert [(t.number, t.state) for t in killed] == [(2, TrialState.FAIL)]
    assert read_run(sweep / "2")["status"] == "failed"
    assert len(trials) == 5
    # Trials 0 and 1 were not run again; the resumed ones got new numbers, params and run dirs.
    assert {n: read_run(sweep / str(n))["started_at"] for n in (0, 1)} == started
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))
    params = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(params)) == 4
    run_dirs = [t.user_attrs["run_dir"] for t in counted]
    assert run_dirs == [str(sweep / str(t.number)) for t in counted]
    for trial in counted:
        record = read_run(trial.user_attrs["run_dir"])
        assert record["status"] == "completed"
        assert record["metrics"]["val/iou"] == pytest.approx(trial.value)
    # Every trial is listed; the search ends naming the best.
    rows = (sweep / "optuna_trials.csv").read_text().splitlines()
    assert len(rows) == 1 + len(trials)
    best = max(counted, key=lambda t: t.value)
    assert f"Best trial #{best.number}: val/iou={best.value:.4f}" in again.stdout
    # Running the finished search again runs nothing.
    done = train_py(*args, env=ONE_THREAD_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(load(sweep).trials) == len(trials)
    assert "Launching" not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned(tmp_path: Path) -> None:
    """lr=1e6 blows the loss up at once; a ThresholdPruner on val/loss (rebuilt in the job from
    the study) stops it after its first epoch, while lr=1e-3 trains both epochs."""
    sweep = tmp_path / "sweep"
    result = train_py(
        *search_args(
            sweep,
            tmp_path / "data",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.direction=minimize",
            "optimized_metric=val/loss",
            "trainer.max_epochs=2",
            "~hydra.sweeper.params",
            "optimizer.lr=choice(0.001,1000000.0)",
            "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
            "~hydra.sweeper.sampler.n_startup_trials",
            "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
            "~hydra.sweeper.pruner.n_startup_trials",
            "hydra.sweeper.pruner.n_warmup_steps=0",
            "+hydra.sweeper.pruner.upper=10.0",
        ),
        env=ONE_THREAD_ENV,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    trials = {t.params["optimizer.lr"]: t for t in load(sweep).trials}
    assert sorted(trials) == [0.001, 1000000.0]
    bad, good = trials[1000000.0], trials[0.001]
    assert bad.state == TrialState.PRUNED
    assert list(bad.intermediate_values) == [0]  # stopped after epoch 0 of 2
    assert bad.user_attrs["pruned_at_epoch"] == 0
    assert read_run(bad.user_attrs["run_dir"])["status"] == "pruned"
    assert good.state == TrialState.COMPLETE
    assert list(good.intermediate_values) == [0, 1]
    good_record = read_run(good.user_attrs["run_dir"])
    assert good_record["status"] == "completed"
    assert good.value == pytest.approx(good_record["metrics"]["val/loss"])


def test_example_search_composes_and_builds() -> None:
    cfg = compose_config([f"hparams_search={SEARCH}"], return_hydra_config=True)
    node = cfg.hydra.sweeper
    assert node._target_ == "hydra_plugins.nailseg_optuna.OptunaSweeper"
    sweeper = instantiate(node)  # as Hydra's Plugins does: _recursive_ false keeps the nodes
    assert isinstance(sweeper, OptunaSweeper) and isinstance(sweeper, Sweeper)
    assert sweeper.sampler_node["_target_"] == "optuna.samplers.TPESampler"
    space, fixed = search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert fixed == []
    assert space["optimizer.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["loss"] == optuna.distributions.CategoricalDistribution(
        ["bce_dice", "dice", "lovasz_symmetric"]
    )
    assert isinstance(space["aug.policy.affine.degrees"], optuna.distributions.FloatDistribution)
    # Every searched choice composes: the options exist.
    compose_config(["loss=lovasz_symmetric", "encoder=mobilenet_v2"])
    # Hydra knows the plugin under the name the config gives.
    from hydra.core.plugins import Plugins

    assert node._target_ in Plugins.instance().class_name_to_class


def test_space_grammar_and_a_changed_space_is_refused(tmp_path: Path) -> None:
    space, fixed = search_space(
        ["a=int(interval(8, 64))", "b=range(1, 5)", "c=x,y", "d=3", "a=tag(log, interval(1, 8))"]
    )
    assert space["a"] == optuna.distributions.FloatDistribution(1.0, 8.0, log=True)
    assert space["b"] == optuna.distributions.IntDistribution(1, 4)
    assert space["c"] == optuna.distributions.CategoricalDistribution(["x", "y"])
    assert fixed == ["d=3"]
    spec = f"sqlite:///{tmp_path / 'optuna.db'}"
    OptunaSweeper(study_name="s")._open_study(spec, space)
    OptunaSweeper(study_name="s")._open_study(spec, dict(space))  # the same space resumes
    with pytest.raises(SearchConfigError, match="another search space.*c differ"):
        OptunaSweeper(study_name="s")._open_study(spec, {**space, "c": space["b"]})
    with pytest.raises(SearchConfigError, match="not minimize"):
        OptunaSweeper(study_name="s", direction="minimize")._open_study(spec, space)
    with pytest.raises(SearchConfigError, match="interval"):
        search_space(["a=glob(*)"])


def test_a_trial_left_running_is_failed_and_requeued(tmp_path: Path) -> None:
    spec = f"sqlite:///{tmp_path / 'optuna.db'}"
    space, _ = search_space(["optimizer.lr=tag(log, interval(1e-4, 1e-2))"])
    sweeper = OptunaSweeper(study_name="s", requeue_failed=True)
    study = sweeper._open_study(spec, space)
    left = study.ask(space)  # as a killed search leaves it: RUNNING
    assert sweeper.counted(study) == 0
    sweeper._fail_stale(study)
    trials = study.trials
    assert trials[0].state == TrialState.FAIL and INTERRUPTED_ATTR in trials[0].user_attrs
    assert sweeper.counted(study) == 0  # a killed trial does not count towards n_trials
    assert trials[1].state == TrialState.WAITING
    assert study.ask(space).params == left.params  # the next ask runs its parameters again
