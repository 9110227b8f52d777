"""What a sweep is: the command's settings, and the spec each of its workers takes trials by."""

import json
import os
from dataclasses import asdict, dataclass

from experiments import Param
from pipelines.params import DRY_RUN, ENTRY_POINT_SETTINGS, EXPERIMENT, NAME_PATTERN, SYSTEM_METRICS_INTERVAL

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "hyperband", "none")
SETTINGS = {
    **ENTRY_POINT_SETTINGS,
    "experiment": EXPERIMENT,
    "n_trials": Param(int, 20, "finished (complete plus pruned) trials the study stops at, across all workers", ge=1),
    "timeout": Param(float, 0.0, "start no trial after this many seconds; 0: no limit", ge=0),
    "study_name": Param(
        str, "", "the Optuna study; the same name resumes it; empty: the entry point's name", pattern=NAME_PATTERN
    ),
    "storage": Param(
        str,
        "",
        "a journal file, sqlite:///file.db (one worker) or postgresql://user@host/db; empty: mlruns/optuna.journal",
    ),
    "sampler": Param(
        str, "tpe", "Optuna's sampler, seeded with seed (offset per worker and per command)", choices=SAMPLERS
    ),
    "pruner": Param(str, "median", "Optuna's pruner; it sees the validation metric after every epoch", choices=PRUNERS),
    "workers": Param(int, 1, "worker processes on this machine; they share its cores", ge=1),
    "trials_per_process": Param(
        int,
        10,
        "a worker hands over to a fresh process after this many trials, which gives back the memory "
        "TensorFlow keeps of every model it traced; 0: never. One worker with no more trials to run than this "
        "trains in the sweep's own process",
        ge=0,
    ),
    "search_space": Param(str, "", "a YAML/JSON file (or inline JSON) that narrows or overrides the task's space"),
    "pruner_startup_trials": Param(int, 2, "trials run in full before median pruning starts", ge=0),
    "pruner_warmup_epochs": Param(int, 0, "epochs a trial runs before median pruning may stop it", ge=0),
    "heartbeat_interval": Param(int, 10, "seconds between a trial's heartbeats on PostgreSQL storages", ge=1),
    "system_metrics_interval": SYSTEM_METRICS_INTERVAL,
    "dry_run": DRY_RUN,
}
WORKER_SPEC_ENV = "PIPELINES_SWEEP_WORKER"


@dataclass(frozen=True)
class SweepSpec:
    """What a worker needs to take trials of the study (passed to worker processes as JSON)."""

    entry_point: str
    params: dict  # every trial's fixed parameters
    space: dict  # name -> Optuna distribution, as JSON
    study_name: str
    storage: str
    n_trials: int
    deadline: float | None  # wall-clock time after which no trial starts
    sampler: str
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    heartbeat_interval: int
    trials_per_process: int  # 0: no limit
    system_metrics_interval: int  # each trial's run samples system metrics this often; 0: never
    experiment_id: str
    parent_run_id: str
    session: int = 0  # how many sweep commands opened the study before this one
    worker_index: int = 0  # which of the processes this command started, counting those that handed over

    def to_env(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls):
        return cls(**json.loads(os.environ[WORKER_SPEC_ENV]))
