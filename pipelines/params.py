"""The training parameters every entry point takes, and an entry point's full, checked recipe.

MLflow passes `-P` values to the entry point unchecked (it validates only `path` and
`uri`), so every value is parsed and range-checked here before any run work starts.
A task's model knobs are declared beside its variants (`experiments/<task>.py`).
"""

from dataclasses import replace

from experiments import InputError, Param

OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
LR_SCHEDULES = ("constant", "cosine")
NAME_PATTERN = r"[A-Za-z0-9_.-]{0,100}"  # study and model names: safe in file names and search filters
MAIN_ENTRY_POINT = "mnist_cnn"
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
MAX_EPOCHS = 1_000_000
MAX_EXAMPLES = 2**31 - 1  # TensorFlow counts a dataset's examples in 32 bits
MAX_EXPERIMENT_NAME = 256  # MLflow checks 500, but its table's column holds 256 on PostgreSQL

TRAINING_PARAMS = {
    "epochs": Param(int, 10, "passes over the training data", ge=1, le=MAX_EPOCHS),
    "batch_size": Param(int, 32, "examples per gradient step", ge=1, le=MAX_EXAMPLES),
    "learning_rate": Param(float, 0.001, "the optimizer's step size", gt=0),
    "optimizer": Param(str, "adam", "the optimizer", choices=OPTIMIZERS),
    "lr_schedule": Param(
        str, "constant", "constant, or cosine decay from learning_rate to 0 over all epochs", choices=LR_SCHEDULES
    ),
    "seed": Param(int, 42, "seeds Python, NumPy, Keras, the batches and the validation split", ge=0, le=MAX_SEED),
    # The test split stays put when `seed` changes: runs of a task are tested on the same examples,
    # so they pair example by example (promote's gate) and repeats vary the training alone.
    "split_seed": Param(
        int,
        42,
        "seeds the test split, for tasks that draw or generate one (churn, iris, linear); change it to test "
        "on other examples",
        ge=0,
        le=MAX_SEED,
    ),
    "max_samples": Param(int, 0, "train on this many examples; 0 uses all", ge=0, le=MAX_EXAMPLES),
    "validation_fraction": Param(float, 0.1, "share of the training data held out to validate", ge=0, lt=1),
    "patience": Param(
        int,
        0,
        "stop once the validation metric has not improved for this many epochs, keeping the best epoch's "
        "weights; 0: never",
        ge=0,
        le=MAX_EPOCHS,
    ),
    "data": Param(str, "", "the data file or folder; empty: the task's usual place"),
}
# Settings of the commands that run an entry point: train, sweep, promote, workflow.
ENTRY_POINT_SETTINGS = {
    "task": Param(str, MAIN_ENTRY_POINT, "a task (mnist) or an entry point (mnist_cnn_bn)"),
    "variant": Param(str, "", "the task's variant; empty: the entry point's, or the task's default"),
}
EXPERIMENT = Param(
    str,
    "",
    "the MLflow experiment; empty: $MLFLOW_EXPERIMENT_NAME (or _ID), else the task's name",
    max_length=MAX_EXPERIMENT_NAME,
)
DRY_RUN = Param(bool, False, "print the merged recipe as YAML and exit without starting a run")
RESUME = Param(
    str,
    "",
    "continue this run (its id) from its last checkpoint, with its own entry point and parameters: a KILLED, "
    "FAILED or lost run, or a FINISHED one given more epochs",
    pattern="[0-9a-fA-F]*",
)
REPEATS = Param(
    int,
    1,
    "train this many seeds (seed, seed+1, ...) as nested runs under one parent run, which logs each test "
    "metric's mean, std, min and max and names its median seed's run",
    ge=1,
    le=1000,
)
SYSTEM_METRICS_INTERVAL = Param(
    int, 10, "seconds between samples of MLflow's system metrics (CPU, memory, disk, network, GPU); 0: none", ge=0
)
# Where an entry point's defaults come from, weakest first; the user's values override all.
DEFAULT_SOURCES = ("common", "task", "variant")
RESUMED_RUN = "resumed run"


def declared_params(task, variant):
    """{name: Param} of the entry point: training parameters, then the variant's knobs, each
    with the default that applies to it (common < task < variant)."""
    knobs = task.variants[variant].knobs
    params = {**TRAINING_PARAMS, **knobs}
    if not task.data_help:  # the task reads no files
        del params["data"]
    for source, defaults in default_layers(task, variant)[1:]:
        unknown = set(defaults) - set(params)
        assert not unknown, f"{task.qualified_name(variant)}: {source} defaults for undeclared parameters {unknown}"
        for name, value in defaults.items():
            params[name] = replace(params[name], default=value)
    return params


def default_layers(task, variant):
    """[(source, {name: default})], weakest first: the common defaults, the task's, the variant's."""
    chosen = task.variants[variant]
    common = {name: param.default for name, param in TRAINING_PARAMS.items()}
    knobs = {name: param.default for name, param in chosen.knobs.items()}
    return list(zip(DEFAULT_SOURCES, (common, task.defaults, {**knobs, **chosen.defaults}), strict=True))


def changes_from_default(task, variant):
    """What `variant`'s recipe changes against its task's default variant, in words, '' for the
    default itself: "`l2` 0.0001 added; `epochs` 12 (not 6), `batch_size` 128 (not 256)". An A/B
    of the two compares all of it, not its model alone."""
    if variant == task.default_variant:
        return ""
    ours, theirs = declared_params(task, variant), declared_params(task, task.default_variant)
    added = [f"`{name}` {_shown(param.default)}" for name, param in ours.items() if name not in theirs]
    changed = [
        f"`{name}` {_shown(param.default)} (not {_shown(theirs[name].default)})"
        for name, param in ours.items()
        if name in theirs and param.default != theirs[name].default
    ]
    dropped = [f"`{name}`" for name in theirs if name not in ours]
    parts = [
        ", ".join(added) + " added" if added else "",
        ", ".join(changed),
        ", ".join(dropped) + " dropped" if dropped else "",
    ]
    return "; ".join(part for part in parts if part) or "nothing but its model"


def _shown(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_params(task, variant, overrides):
    """The entry point's defaults with `overrides` ({name: value or its text}) parsed and checked."""
    declared = declared_params(task, variant)
    params = {name: param.default for name, param in declared.items()}
    for name, raw in overrides.items():
        if name not in declared:
            raise InputError(
                f"{name}: not a parameter of {task.qualified_name(variant)} "
                f"(its parameters: {', '.join(sorted(declared))})"
            )
        params[name] = declared[name].parse(name, raw)
    return params


def recipe(task, variant, params, overrides, from_run=()):
    """The merged recipe of a run, as `--dry_run` prints it: every parameter's value (`params`)
    and where it came from (`overrides`: those given on the command line; `from_run`: those a
    resumed run keeps)."""
    source = {name: layer for layer, defaults in default_layers(task, variant) for name in defaults if name in params}
    source |= {name: RESUMED_RUN for name in from_run} | {name: "command line" for name in overrides}
    layers = (*DEFAULT_SOURCES, *([RESUMED_RUN] if from_run else []), "command line")
    chosen = task.variants[variant]
    return {
        "entry_point": task.qualified_name(variant),
        "task": task.name,
        "variant": variant,
        "model": chosen.description,
        f"against {task.qualified_name(task.default_variant)}": changes_from_default(task, variant)
        or "it is the default",
        "params": params,
        "set_by": {layer: [n for n in params if source[n] == layer] for layer in layers},
        "search_space": sorted(chosen.search_space),
    }


def knob_values(task, variant, params):
    """The arguments the variant's model builder takes: its knobs' values, and what it fixes."""
    chosen = task.variants[variant]
    return {**chosen.fixed, **{name: params[name] for name in chosen.knobs}}
