"""Opening a search's Optuna study so that concurrent, killed and rerun workers lose and duplicate nothing.

- Reuse: an existing study is checked (direction, and every attribute it records: method, suite, dataset, scale)
  with reads only; a mismatch is one UsageError and the storage is left as it was.
- Seeds: the worker that creates the study draws from the base seed; every other one from a fresh random seed.
  Each trial records the seed that drew it in ``user_attrs["sampler_seed"]``.
- Budget: the study's total counts finished trials, except a heartbeat-stale one that Optuna's retry callback
  replaced with a copy (the copy is counted when it finishes). On storages with heartbeats a worker starts a trial
  only while the budget has room, so workers ending together do not overshoot it (BudgetCallback).
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from bench.core.errors import UsageError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
DIRECTIONS = [StudyDirection.MAXIMIZE]  # validation accuracy
SEED_SPACE = 2**32  # TPE's numpy RandomState takes seeds below 2**32
OVER = "over_budget"  # user attribute of a trial that found the budget full after it was created


def make_sampler(seed: int):
    # Optuna 5 changed the defaults of both flags; set them so a version bump cannot change the search.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)


PRUNERS = {
    # Epoch 1 is too noisy to stop on: prune from epoch 2, against at least two earlier trials.
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs),
                                                               reduction_factor=3),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}


def make_pruner(name: str, epochs: int):
    if name not in PRUNERS:
        raise UsageError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    return PRUNERS[name](epochs)


def worker_seed(base: int, created: bool) -> int:
    """The sampler seed of one worker: ``base`` for the study's creator, else ``base`` plus fresh OS randomness.

    A seed derived from the study's state (e.g. base + trials so far) is the same for two workers that start at
    the same instant, and two TPE samplers with one seed draw identical parameters. Creating a study is atomic in
    the storage, so exactly one worker is its creator: it keeps ``base`` and a single worker's first run of a new
    study stays reproducible from --sampler-seed. Every other worker (concurrent, or a later rerun) adds a
    nonzero random offset; it is logged and stored on each trial it draws, so the study says where each came from.
    """
    if created:
        return base % SEED_SPACE
    return (base + 1 + secrets.randbelow(SEED_SPACE - 1)) % SEED_SPACE


def retried(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a later trial retries (RetryHeartbeatStaleTrialCallback's retry history)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}


def in_budget(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that take a place in the budget: all but the stale ones a retry replaced and those over budget."""
    replaced = retried(trials)
    return [t for t in trials if t.number not in replaced and not t.user_attrs.get(OVER)]


def counted(study) -> list[FrozenTrial]:
    """The trials the budget counts: finished ones, less the stale ones whose retry takes their place (and any that
    were over budget, which never ran)."""
    return [t for t in in_budget(study.get_trials(deepcopy=False)) if t.state in FINISHED]


def claimed(study) -> int:
    """Trials that hold a place in the budget: finished or running."""
    return sum(t.state in (*FINISHED, TrialState.RUNNING) for t in in_budget(study.get_trials(deepcopy=False)))


class OverBudget(Exception):
    """Two workers found room for one more trial at the same moment: the later-numbered one is not run."""


class BudgetCallback:
    """Stop every worker once the study's total is reached, and start a trial only while the budget has room.

    Optuna's MaxTrialsCallback counts by state only, so a killed worker's stale trial (FAIL) and its retry would
    both be counted and the study would end one trial short of its budget. Counting finished trials alone lets a
    worker start one more trial while the last ones still run, so workers ending together overshoot the total: on
    storages with heartbeats, a worker whose next trial would not fit waits (failing stale trials as Optuna does)
    until the running ones end. Journal files have no heartbeat, so a killed worker's trial would hold its place
    forever: there running trials are not waited for.
    """

    def __init__(self, trials: int, storage=None, log: Callable[[str], None] = print) -> None:
        self.trials, self.log = trials, log
        beats = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval()
        self.poll = min(5.0, beats / 2) if beats else 0.0

    def room(self, study) -> bool:
        """Wait until one more trial fits (True) or the study's total is reached (False)."""
        waited = False
        while len(counted(study)) < self.trials:
            if not self.poll or claimed(study) < self.trials:
                return True
            if not waited:
                self.log(f"the study's last trials are running; waiting for them to end or for their heartbeats to go "
                         f"stale (killed workers' trials are then retried), checking every {self.poll:g} s")
                waited = True
            time.sleep(self.poll)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        return False

    def __call__(self, study, trial) -> None:
        if not self.room(study):
            study.stop()

    def guard(self, objective):
        """``objective``, run only if its trial is among the budget's first (trial numbers are handed out in
        order); otherwise the trial fails as over budget, marked so that nothing counts it."""

        def run(trial):
            ahead = [t for t in in_budget(trial.study.get_trials(deepcopy=False)) if t.number < trial.number
                     and t.state in (*FINISHED, TrialState.RUNNING, TrialState.WAITING)]
            if self.poll and len(ahead) >= self.trials:
                trial.set_user_attr(OVER, True)
                trial.set_user_attr("fail_reason", "over budget")
                raise OverBudget(f"trial {trial.number}: the study's {self.trials} trials are all taken")
            return objective(trial)

        return run


def _directions_text(directions) -> str:
    return ", ".join(d.name.lower() for d in directions)


def study_attrs(method: str, suite, split) -> dict[str, Any]:
    """What a study records about its search (a SearchSuite, its validation split); reused only if all match."""
    s = suite.scale
    return {"method": method, "suite": suite.name, "dataset": s.dataset, "per_class": s.per_class, "epochs": s.epochs,
            "backbone": s.backbone, "val_fraction": suite.val_fraction, "n_fit": len(split.train_y),
            "n_val": len(split.test_y), "chance": 1 / split.num_classes}


def check_reuse(storage, name: str, attrs: dict[str, Any]) -> bool:
    """Whether study ``name`` exists; UsageError when it was made for something else. Reads only."""
    try:
        sid = storage.get_study_id_from_name(name)
    except KeyError:
        return False
    fix = "pick another --study name or --storage"
    directions = storage.get_study_directions(sid)
    if list(directions) != DIRECTIONS:
        raise UsageError(f"study {name!r} exists with direction {_directions_text(directions)}, but search maximises "
                         f"one validation accuracy; {fix}")
    have = storage.get_study_user_attrs(sid)
    if "method" not in have and storage.get_n_trials(sid) > 0:
        raise UsageError(f"study {name!r} exists with trials but was not made by repbench search (no 'method' "
                         f"attribute); {fix}")
    for k, v in attrs.items():
        if k in have and have[k] != v:
            raise UsageError(f"study {name!r} was made with {k}={have[k]!r}, not {v!r}; {fix}")
    return True


@dataclass(frozen=True)
class Opened:
    study: optuna.Study
    seed: int  # this worker's sampler seed
    created: bool  # this worker created the study (and so enqueues the paper's point)


def open_study(storage, name: str, attrs: dict[str, Any], base_seed: int, pruner) -> Opened:
    """Load (after ``check_reuse``) or create the study, then record ``attrs`` on it."""
    created = False
    if not check_reuse(storage, name, attrs):
        try:
            storage.create_new_study(DIRECTIONS, name)
            created = True
        except DuplicatedStudyError:  # another worker created it a moment ago: check it like any existing one
            check_reuse(storage, name, attrs)
    seed = worker_seed(base_seed, created)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(seed), pruner=pruner)
    missing = {k: v for k, v in attrs.items() if k not in study.user_attrs}
    for k, v in missing.items():
        study.set_user_attr(k, v)
    return Opened(study, seed, created)
