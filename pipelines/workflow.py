"""The whole loop in one command: sweep -> promote -> compare, each step its own MLflow run.

    mlflow run . -e pipeline --env-manager local -P task=mnist_cnn -P n_trials=20

Like MLflow's multistep-workflow example, each step is launched with `mlflow.projects.run`
inside the pipeline's run, so the steps' runs nest under it; each step's run is also
tagged with the run of the step before it.
"""

from pathlib import Path

import mlflow
from mlflow.exceptions import ExecutionException

from experiments import InputError
from pipelines import tracking
from pipelines.params import PARAMS
from pipelines.registry import PROMOTE_DEFAULTS, PROMOTE_PARAMS
from pipelines.sweep import SWEEP_DEFAULTS, SWEEP_PARAMS, SWEEP_TRAINING_DEFAULTS

PROJECT_DIR = Path(__file__).resolve().parents[1]
# The sweep's settings and per-trial training parameters, plus the promotion's margin.
PIPELINE_PARAMS = {**SWEEP_PARAMS, **{name: PARAMS[name] for name in SWEEP_TRAINING_DEFAULTS}, "margin": PROMOTE_PARAMS["margin"]}
PIPELINE_DEFAULTS = {**SWEEP_DEFAULTS, **SWEEP_TRAINING_DEFAULTS, "margin": PROMOTE_DEFAULTS["margin"]}


class StepFailed(InputError):
    """A step's run ended FAILED or KILLED: the pipeline stops there."""


def run_pipeline(task, variant, sweep_settings, margin, experiment=""):
    """Run the three steps for one entry point; return {step: run id}.

    `sweep_settings` are the sweep's parameters, training parameters (`data`, ...) included.
    """
    entry_point = task.qualified_name(variant)
    study = sweep_settings.get("study_name") or entry_point
    steps = [
        ("sweep", {"task": entry_point, **sweep_settings, "study_name": study}),
        ("promote", {"task": entry_point, "study": study, "margin": margin}),
        ("compare", {"model": entry_point}),
    ]
    experiment_id = tracking.use_experiment(experiment, task.name)
    client = mlflow.MlflowClient()
    run_ids = {}
    tags = {"task": task.name, "variant": variant, "model": entry_point, "step": "pipeline"}
    with tracking.training_run(run_name=f"pipeline-{entry_point}", tags=tags):
        for step, parameters in steps:
            print(f"pipeline step {step}: mlflow run . -e {step} " + " ".join(f"-P {k}={v}" for k, v in parameters.items()), flush=True)
            try:
                submitted = mlflow.projects.run(
                    str(PROJECT_DIR), step, parameters=parameters, env_manager="local", experiment_id=experiment_id
                )
            except ExecutionException as error:
                raise StepFailed(f"{step}: the step failed ({str(error).splitlines()[0]}); its run's logs say why") from None
            if run_ids:
                previous_step = list(run_ids)[-1]
                client.set_tag(submitted.run_id, f"pipeline.{previous_step}_run_id", run_ids[previous_step])
            run_ids[step] = submitted.run_id
            mlflow.set_tag(f"pipeline.{step}_run_id", submitted.run_id)
    print(f"pipeline {entry_point} finished: " + ", ".join(f"{step} run {run_id}" for step, run_id in run_ids.items()))
    print(f"serve the champion: mlflow models serve -m models:/{entry_point}@champion --env-manager local")
    return run_ids
