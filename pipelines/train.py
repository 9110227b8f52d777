"""The one training pipeline every task and variant runs through, for plain runs and sweeps.

Steps are plain functions: prepare_data (`data`) -> build_model -> fit_model -> served_model
-> evaluate_model; `train` chains them inside an MLflow run, checkpointed after every epoch
(and resumed from a checkpoint when asked), and logs the run: autologging stays off, and
`logging_callbacks` log in its place what a kill must not lose or repeat.
"""

import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import keras
import mlflow
import numpy as np
import optuna
import tensorflow as tf

from experiments import RunFailed
from experiments.task import EVALUATION_BATCH_SIZE
from pipelines import checkpoints, reporting, resume, schema, stopping, tracking
from pipelines.data import monitored_metric, prepare_data
from pipelines.logging_callbacks import EpochMetrics, ModelSummary
from pipelines.params import SYSTEM_METRICS_INTERVAL, declared_params, knob_values

# Steps run per call into the compiled train function. Batch-end callbacks (CheckStop,
# TerminateOnNaN) and Python dispatch then cost once per 32 steps instead of every step:
# small models such as churn gain most; conv nets, bound by their kernels, gain little
# (benchmarks/performance.md).
STEPS_PER_EXECUTION = 32
# tf.data's autotuning thread sleeps between its rounds, and an iterator's end waits for it to
# wake: up to several seconds at every epoch's end. Gathering a batch costs next to nothing,
# so a fixed prefetch does as well without it.
PREFETCHED_BATCHES = 2
WITHOUT_AUTOTUNE = tf.data.Options()
WITHOUT_AUTOTUNE.autotune.enabled = False
LOSSES = {
    "binary": "binary_crossentropy",
    "multiclass": "sparse_categorical_crossentropy",
    "regression": "mse",
}
METRICS = {"binary": ["accuracy"], "multiclass": ["accuracy"], "regression": ["mae"]}


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite: a failed run (or sweep trial), not a crash."""


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_id: str
    metrics: dict
    history: dict


def seed_everything(seed):
    """Same seed and parameters, same metrics: seed everything and use deterministic ops."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        tf.config.experimental.enable_op_determinism()


def build_model(task, variant, params, splits, steps_per_execution=STEPS_PER_EXECUTION):
    num_outputs = len(splits.class_names) if task.kind == "multiclass" else 1
    model = task.variants[variant].build(splits.x_train.shape[1:], num_outputs, **knob_values(task, variant, params))
    learning_rate = params["learning_rate"]
    if params["lr_schedule"] == "cosine":
        steps_per_epoch = math.ceil(len(splits.x_train) / params["batch_size"])
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, params["epochs"] * steps_per_epoch)
    # Named as the parameter: Keras would number a process's later optimizers (adam_2), and the
    # logged optimizer configuration of a sweep's later trials would differ from the first's.
    config = {"learning_rate": learning_rate, "name": params["optimizer"]}
    optimizer = keras.optimizers.get({"class_name": params["optimizer"], "config": config})
    model.compile(
        optimizer=optimizer,
        loss=LOSSES[task.kind],
        metrics=METRICS[task.kind],
        steps_per_execution=steps_per_execution,
    )
    return model


class ShuffledBatches(keras.callbacks.Callback):
    """Batches of the training split, in an order drawn from (seed, epoch) alone.

    The order depends on the epoch's number, not on how many epochs this process has run,
    so a resumed training sees each epoch's batches in the order an uninterrupted one did.
    Shuffling indices and gathering keeps no second copy of the data in a shuffle buffer,
    and the pipeline is cheaper to start every epoch than the one Keras builds around
    arrays, whose start weighs on small models' short epochs. Pass it to `fit` as a callback
    too: it sets the epoch before each one starts.
    """

    def __init__(self, features, targets, batch_size, seed):
        super().__init__()
        features, targets, self.seed, self.count = tf.constant(features), tf.constant(targets), seed, len(features)
        self.order = tf.Variable(tf.range(self.count, dtype=tf.int64), trainable=False)  # this epoch's

        def gather(positions):
            examples = tf.gather(self.order, positions)
            return tf.gather(features, examples), tf.gather(targets, examples)

        batches = tf.data.Dataset.range(self.count).batch(batch_size)
        self.dataset = batches.map(gather).prefetch(PREFETCHED_BATCHES).with_options(WITHOUT_AUTOTUNE)

    def on_epoch_begin(self, epoch, logs=None):
        # Before the epoch's iterator starts reading: Keras creates it after this call.
        self.order.assign(np.random.default_rng([self.seed, epoch]).permutation(self.count))


class CheckStop(keras.callbacks.Callback):
    """Stops a training after the execution of steps under way once a stop signal has come
    (`train` defers stops to it: see `stopping`)."""

    def on_train_batch_end(self, batch, logs=None):
        stopping.raise_if_stopped()

    on_test_batch_end = on_predict_batch_end = on_epoch_end = on_train_batch_end


def fit_model(model, splits, params, callbacks=()):
    """Fit for params["epochs"] epochs (from the epoch a restored checkpoint reached); Keras' history of this fit."""
    batches = ShuffledBatches(splits.x_train, splits.y_train, params["batch_size"], params["seed"])
    validation = None
    if splits.x_val is not None:
        validation = tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).batch(EVALUATION_BATCH_SIZE)
        validation = validation.with_options(WITHOUT_AUTOTUNE)
    with warnings.catch_warnings():
        # Keras warns that its shuffle=True default does not apply to a dataset: ours shuffles itself.
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
        history = model.fit(
            # Finite, not repeated: Keras ends each epoch when the data does. Given steps_per_epoch
            # instead, it would run whole executions of 32 steps past the epoch's end.
            batches.dataset,
            validation_data=validation,
            epochs=params["epochs"],
            callbacks=[batches, CheckStop(), keras.callbacks.TerminateOnNaN(), *callbacks],
            verbose=2,
        )
    return history.history


def served_model(task, variant, model):
    """The model evaluated and logged: the trained one, or what its variant's `serve` wraps
    it in, compiled with the same loss and metrics so that evaluating it reads the same."""
    serve = task.variants[variant].serve
    if serve is None:
        return model
    served = serve(model)
    # Never trained: plain SGD, which keeps no state per weight to save.
    served.compile(optimizer="sgd", loss=LOSSES[task.kind], metrics=METRICS[task.kind])
    # Built, as loading the logged model builds it: else Keras warns at every load that its variables differ.
    served.optimizer.build(served.trainable_variables)
    return served


def check_finite(history, params):
    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"learning_rate: training diverged (loss {losses[-1]} at epoch {len(losses)}); "
            f"try a learning rate below {params['learning_rate']}"
        )


def evaluate_model(model, task, variant, splits):
    """Held-out metrics on the test split from one prediction pass, and the confusion
    matrix for classifiers. Returns (metrics, matrix, outputs)."""
    outputs = model.predict(splits.x_test, batch_size=EVALUATION_BATCH_SIZE, verbose=0)
    # compute_loss adds the regularization penalties, as model.evaluate's loss does.
    metrics = {"test_loss": float(model.compute_loss(y=splits.y_test, y_pred=outputs, training=False))}
    matrix = None
    if task.kind == "regression":
        errors = outputs.reshape(-1) - np.reshape(splits.y_test, -1)
        metrics |= {"test_mae": float(np.mean(np.abs(errors))), "test_mse": float(np.mean(errors**2))}
    else:
        predicted = reporting.predicted_labels(task.kind, outputs)
        metrics["test_accuracy"] = float(np.mean(predicted == np.reshape(splits.y_test, -1)))
        metrics |= reporting.classification_metrics(task.kind, splits.y_test, outputs, splits.class_names)
        matrix = reporting.confusion(task.kind, splits.y_test, outputs, splits.class_names)
    metrics |= reporting.interval_metrics(task.kind, splits.y_test, outputs)
    extra_metrics = task.variants[variant].extra_metrics
    if extra_metrics:
        metrics |= extra_metrics(model, splits)
    undefined = sorted(name for name, value in metrics.items() if not math.isfinite(value))
    if undefined:  # ROC AUC of a test split holding one class, say: not logged, not a number to compare
        print(f"warning: {', '.join(undefined)}: undefined on this test split; not logged", file=sys.stderr)
    return {name: value for name, value in metrics.items() if name not in undefined}, matrix, outputs


def log_predictions(task, splits, outputs, test_digest):
    """The test split's truth and predictions (`schema.PREDICTIONS_ARTIFACT`, with the
    split's digest): what promote's paired gate and compare's pairwise tests read, so that
    two runs are paired example by example without loading either model."""
    with tempfile.TemporaryDirectory(prefix="predictions-") as folder:
        artifact_folder, _, name = schema.PREDICTIONS_ARTIFACT.rpartition("/")
        reporting.write_predictions(f"{folder}/{name}", task.kind, splits.y_test, outputs, test_digest)
        mlflow.log_artifact(f"{folder}/{name}", artifact_folder)


def start_line(run, resumption, epochs):
    """What a training says first: its run, and where a resumed one goes on from."""
    if resumption is None:
        experiment = mlflow.get_experiment(run.info.experiment_id).name
        return f"run {run.info.run_id} started: {run.info.run_name}, in experiment '{experiment}'"
    if resumption.checkpoint is None:
        return f"run {run.info.run_id} resumed: it has no complete checkpoint, so it trains again from epoch 1"
    done = resumption.checkpoint.epoch
    if done >= epochs:
        rest = "no epoch is left to train: it is tested"
    else:
        rest = f"it trains epoch {epochs}" if done + 1 == epochs else f"it trains epochs {done + 1} to {epochs}"
    return f"run {run.info.run_id} resumed from its checkpoint after epoch {done}: {rest}"


def train(
    task,
    variant,
    params,
    callbacks=(),
    tags=None,
    run_name=None,
    parent_run_id=None,
    splits=None,
    system_metrics_interval=None,
    resume_run_id="",
    start_from=None,
):
    """Train one task variant in a tracked MLflow run and return its test metrics.

    Plain runs and sweep trials both come through here. A sweep trial passes its
    pruning callback, its study's run as `parent_run_id`, and the `splits` its worker
    prepared once (from the same data parameters) for all of its trials. The run logs
    MLflow's system metrics every `system_metrics_interval` seconds (0: none; None: as the
    `train` command does by default).

    The run is checkpointed after every epoch (`checkpoints`). `resume_run_id` continues
    that run from its last checkpoint (`resume` says what it refuses); `start_from`, another
    run's checkpoint (`checkpoints.latest`), starts a new run from it, as a sweep's retried trial does.
    """
    name = task.qualified_name(variant)
    if system_metrics_interval is None:
        system_metrics_interval = SYSTEM_METRICS_INTERVAL.default
    seed_everything(params["seed"])
    if splits is None:
        splits = prepare_data(task, variant, params)  # bad data fails here, before any run starts
    datasets = tracking.split_datasets(splits, name=task.name)
    digests = {context: dataset.digest for context, dataset in datasets.items()}
    restored, resumption = start_from, None
    if resume_run_id:  # refused here, before the run changes
        resumption = resume.resumption_of(resume_run_id, task, variant, params, digests)
        restored = resumption.checkpoint
    mlflow.keras.autolog(disable=True)  # logging_callbacks log what it would, in step with the checkpoints
    run_tags = {schema.TASK_TAG: task.name, schema.VARIANT_TAG: variant, schema.ENTRY_POINT_TAG: name, **(tags or {})}
    if resumption or restored:
        run_tags[schema.RESUMED_FROM_EPOCH_TAG] = restored.epoch if restored else 0
        run_tags[schema.RESUME_EPOCHS_TAG] = params["epochs"]
    if restored and not resumption:
        run_tags[schema.RESUMED_FROM_RUN_TAG] = restored.run_id
    if run_name is None and not resume_run_id:  # a resumed run keeps its name
        defaults = {param: declared.default for param, declared in declared_params(task, variant).items()}
        run_name = tracking.run_name(tracking.name_in_experiment(task, variant), params, defaults)
    on_its_own = parent_run_id is None and mlflow.active_run() is None  # not a sweep's trial, nor a repeat
    with tracking.mlflow_run(
        run_name=run_name,
        tags=run_tags,
        parent_run_id=parent_run_id,
        system_metrics_interval=system_metrics_interval,
        resume_run_id=resume_run_id or None,
    ) as run:
        if on_its_own:
            print(start_line(run, resumption, params["epochs"]), flush=True)
            stopping.advise_after_stop(f"resume it: python -m pipelines train --resume {run.info.run_id}")
        # A sweep's workers start their trials at once: a write the busy store refuses is tried again.
        # (A resumed run keeps its first epochs' params; resume.epochs holds the new count.)
        tracking.retrying(lambda: tracking.log_new_params(params))
        tracking.retrying(lambda: tracking.log_datasets(datasets))
        tracking.retrying(lambda: mlflow.set_tag(schema.DATASET_DIGEST_TAG, digests["train"]))
        with stopping.deferred():  # building calls into TensorFlow, which calls back into Python
            model = build_model(task, variant, params, splits)
        mlflow.log_param(schema.NUM_PARAMS_PARAM, model.count_params())
        early_stopping = None
        if params["patience"]:
            monitor, direction = monitored_metric(task, splits)
            mode = "max" if direction == "maximize" else "min"
            early_stopping = keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=params["patience"], restore_best_weights=True
            )
        tracking.map_installed_packages()  # for log_model, while training runs
        with tempfile.TemporaryDirectory(prefix="checkpoint-") as workdir:
            kept = resumption.run_folders if resumption else ()
            epoch_metrics = EpochMetrics(run.info.run_id, restored)
            checkpoint = checkpoints.RunCheckpoint(
                run.info.run_id, workdir, epoch_metrics, early_stopping, restored, kept
            )
            # The epoch's metrics and early stopping before the checkpoint, which saves their state; pruning after it.
            run_callbacks = [ModelSummary(), epoch_metrics, *([early_stopping] if early_stopping else []), checkpoint]
            start = time.perf_counter()
            try:
                with stopping.deferred():  # TensorFlow's code is no place for a signal's exception
                    fit_model(model, splits, params, [*run_callbacks, *callbacks])
            except optuna.TrialPruned:
                epoch_metrics.log_pending()  # a pruned trial is never resumed: its last epochs are all it will have
                raise
            train_seconds = checkpoint.seconds_before + time.perf_counter() - start
        history = epoch_metrics.history
        check_finite(history, params)
        if early_stopping:
            epochs_run = {
                schema.BEST_EPOCH_METRIC: early_stopping.best_epoch + 1,
                schema.STOPPED_EPOCH_METRIC: len(history["loss"]),
            }
            mlflow.log_metrics(epochs_run)
        with stopping.deferred():
            model = served_model(task, variant, model)
            metrics, matrix, outputs = evaluate_model(model, task, variant, splits)
        epochs = len(history["loss"])
        model_step = early_stopping.best_epoch if early_stopping else epochs - 1  # the epoch whose weights it holds
        with stopping.deferred():  # saving too
            model_info = tracking.log_model(
                model, splits.x_train, outputs, name=name, step=model_step, pixels=task.pixel_inputs
            )
        if resumption:
            resume.discard_earlier_models(resumption, model_info.model_id)
        # Milliseconds: the runs table shows the digits it is given.
        mlflow.log_metrics({**metrics, schema.TRAIN_TIME_METRIC: round(train_seconds, 3)}, model_id=model_info.model_id)
        description = tracking.describe_training(
            name, metrics, task.primary_metric, params, epochs, train_seconds, digests, history
        )
        mlflow.set_tag(schema.DESCRIPTION_TAG, description)
        interval = schema.logged_interval(metrics, task.primary_metric)
        if interval:  # the runs table's column of it, beside the metric
            mlflow.set_tag(schema.INTERVAL_TAG, tracking.interval_text(interval))
        logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics  # system metrics among them
        charts = tracking.chart_types(logged, per_epoch={*history, schema.EPOCH_TIME_METRIC})
        view = tracking.share_comparison_view(run.info.experiment_id, task, run_metrics=charts)
        tracking.log_figure(reporting.learning_curves(history), schema.LEARNING_CURVES_ARTIFACT)
        log_predictions(task, splits, outputs, digests["test"])
        if matrix is not None:
            figure = reporting.confusion_figure(matrix, splits.class_names)
            tracking.log_figure(figure, schema.CONFUSION_FIGURE_ARTIFACT)
            confusion = {"labels": list(splits.class_names), "matrix": matrix.tolist()}
            mlflow.log_dict(confusion, schema.CONFUSION_MATRIX_ARTIFACT)
    if on_its_own:  # a sweep or repeats print their own, once
        experiment_id = run.info.experiment_id
        tracking.print_links(
            {
                "this run": tracking.run_url(experiment_id, run.info.run_id),
                "compare it with the other runs": tracking.experiment_url(experiment_id, view),
            }
        )
    return TrainResult(run.info.run_id, model_info.model_id, metrics, history)
