"""Compare registered model versions side by side: metrics, params, size, speed, curves.

    python -m pipelines compare --model mnist_cnn                       # every version
    python -m pipelines compare --model 'mnist_cnn*@champion'           # what each MNIST CNN variant bought

`--model` takes comma-separated specs: `name` (all its versions), `name/3`, `name@champion`;
`*` in a name matches several registered models. The report is an HTML page with a
table (the headline metric's 95% interval beside it, and mean ± std over seeds for a
version from `train --repeats`), the intervals as error bars, a matrix of paired tests
between the versions that share a test split, overlaid learning curves and the
confusion matrices side by side. It is logged on
a `compare-...` run (HTML, PNG and CSV under `comparison/`) and written to a local file.
"""

import base64
import contextlib
import fnmatch
import io
import os
import re
import time
from pathlib import Path

import jinja2
import lazy_loader as lazy
import numpy as np

from experiments import TASKS, InputError, Param
from pipelines import schema, significance, tracking
from pipelines.params import MAIN_ENTRY_POINT, MAX_EXPERIMENT_NAME, NAME_PATTERN, TRAINING_PARAMS
from pipelines.registry import CHAMPION, logged_predictions, test_digest

# Imported on first use: --help and a refused setting need none of them.
mlflow = lazy.load("mlflow")
pd = lazy.load("pandas")
plt = lazy.load("matplotlib.pyplot", suppress_warning=True)

# The params shown for each version: the training recipe, then every knob any task declares.
KEY_PARAMS = tuple(
    dict.fromkeys(
        [name for name in TRAINING_PARAMS if name != "data"]
        + [knob for task in TASKS.values() for variant in task.variants.values() for knob in variant.knobs]
    )
)
CURVES = ("val_accuracy", "val_loss", "accuracy", "loss")  # the first two a run has are drawn
LATENCY_REPEATS = 20
THROUGHPUT_BATCH = 256
REPORT_DIR = Path("reports")
LINEAGE_COLUMNS = ("run_id", "study", "test_dataset_digest", "git_commit")
HEADLINE_METRICS = ("test_accuracy", "test_mse")  # the metrics with a 95% interval
PAIRWISE_ALPHA = 0.05
SETTINGS = {
    "model": Param(
        str, MAIN_ENTRY_POINT, "comma-separated name (every version), name/3, name@champion, 'mnist_cnn*@champion'"
    ),
    "output": Param(str, "", "the local HTML report; empty: reports/compare-<model>.html"),
    "experiment": Param(
        str,
        "",
        "the MLflow experiment of the comparison run; empty: comparisons (under mlflow run, the one it chose)",
        max_length=MAX_EXPERIMENT_NAME,
    ),
}
DEFAULT_EXPERIMENT = "comparisons"
REPORT = jinja2.Environment(loader=jinja2.PackageLoader("pipelines"), autoescape=True)
REPORT.filters["b64encode"] = lambda data: base64.b64encode(data).decode()


# --- which versions ---------------------------------------------------------------------


def resolve_versions(spec):
    """The model versions `spec` names, in the order given, each once."""
    if not spec.strip():
        raise InputError("model: give a registered model, e.g. --model mnist_cnn or --model 'mnist_cnn*@champion'")
    client = mlflow.MlflowClient()
    versions = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, alias = part.partition("@")
        name, _, number = name.partition("/")
        if not (_is_name(name.replace("*", "")) and _is_name(alias) and (number.isdigit() or not number)):
            raise InputError(f"model: '{part}' is not name, name/version or name@alias ({NAME_PATTERN}, '*' in names)")
        for model_name in _model_names(client, name, part):
            for version in _versions(client, model_name, alias, number, part):
                versions[(version.name, int(version.version))] = version
    if not versions:
        raise InputError(f"model: '{spec}' names no model version")
    return list(versions.values())


def _is_name(text):
    return re.fullmatch(NAME_PATTERN, text) is not None


def _model_names(client, pattern, part):
    if "*" not in pattern:
        return [pattern]
    # LIKE's `_` matches any character: fnmatch keeps the names `*` really matches.
    found = client.search_registered_models(filter_string=f"name LIKE '{pattern.replace('*', '%')}'")
    names = sorted(m.name for m in found if fnmatch.fnmatchcase(m.name, pattern))
    if not names:
        raise InputError(f"model: no registered model matches '{part}'")
    return names


def _versions(client, name, alias, number, part):
    try:
        if alias:
            return [client.get_model_version_by_alias(name, alias)]
        if number:
            return [client.get_model_version(name, number)]
        found = client.search_model_versions(f"name = '{name}'")
    except mlflow.MlflowException:
        found = []
    if not found:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise InputError(f"model: no model version '{part}' in the registry (registered models: {known})")
    if alias or number:
        return found
    # Searched versions come without their aliases: fetch each one whole.
    return [client.get_model_version(name, v.version) for v in sorted(found, key=lambda v: int(v.version))]


# --- what is compared -------------------------------------------------------------------


def version_row(client, version):
    """One row of the table: the version's test metrics, key params, size, speed and lineage."""
    run = client.get_run(version.run_id)
    params, metrics = run.data.params, run.data.metrics
    latency_ms, throughput = inference_speed(f"models:/{version.name}/{version.version}")
    row = {
        "model": version.name,
        "version": int(version.version),
        "aliases": ", ".join(sorted(version.aliases)),
        **{
            name: value
            for name, value in sorted(metrics.items())
            if name.startswith(schema.TEST_METRIC_PREFIX) and not _per_class(name)
        },
        **_interval_columns(metrics),
        **_repeat_group(client, run),
        **{name: _as_number(params[name]) for name in KEY_PARAMS if name in params},
        "num_params": int(params[schema.NUM_PARAMS_PARAM]) if schema.NUM_PARAMS_PARAM in params else None,
        "train_time_s": metrics.get(schema.TRAIN_TIME_METRIC),
        "latency_ms": latency_ms,
        "images_per_s": throughput,
        **{name: value for name, value in sorted(metrics.items()) if _per_class(name)},
        "run_id": run.info.run_id,
        "study": schema.study_of(run.data.tags) or "",
        "test_dataset_digest": test_digest(run),
        "git_commit": run.data.tags.get(schema.GIT_COMMIT_TAG, "")[:10],
    }
    return row


def _interval_columns(metrics):
    """`test_accuracy 95%`: the headline metric's interval as text, for the table and the console."""
    columns = {}
    for metric in HEADLINE_METRICS:
        interval = schema.logged_interval(metrics, metric)
        if interval is not None:
            columns[f"{metric} 95%"] = f"{interval[0]:.4f} to {interval[1]:.4f}"
    return columns


def _repeat_group(client, run):
    """`<metric> over seeds`: mean ± std of the headline metric over the seed-repeats group the
    version's run belongs to (`train --repeats N`), or nothing for a run trained alone."""
    parent_id = run.data.tags.get(schema.PARENT_RUN_TAG)
    if not parent_id:
        return {}
    parent = client.get_run(parent_id)
    count = parent.data.tags.get(schema.REPEAT_COUNT_TAG)
    for metric in HEADLINE_METRICS:
        mean, std = (parent.data.metrics.get(schema.repeat_metric_name(metric, stat)) for stat in ("mean", "std"))
        if count and mean is not None and std is not None:
            return {f"{metric} over seeds": f"{mean:.4f} ± {std:.4f} ({count} seeds)"}
    return {}


def _is_interval_end(column):
    return column.endswith(schema.INTERVAL_SUFFIXES)


def intervals_figure(table, labels):
    """Each version's headline metric with its 95% interval as an error bar, or None without intervals."""
    lows = {metric: schema.interval_metric_names(metric)[0] for metric in HEADLINE_METRICS}
    metric = next((m for m, low in lows.items() if low in table and table[low].notna().any()), None)
    if metric is None:
        return None
    rows = [(label, row) for label, (_, row) in zip(labels, table.iterrows(), strict=True) if pd.notna(row[metric])]
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    for position, (_, row) in enumerate(rows):
        value = row[metric]
        low, high = (row.get(name) for name in schema.interval_metric_names(metric))
        error = [[value - low], [high - value]] if pd.notna(low) and pd.notna(high) else None
        axis.errorbar([value], [position], xerr=error, fmt="o", capsize=4)
    axis.set_yticks(range(len(rows)), [label for label, _ in rows])
    axis.invert_yaxis()
    axis.set(title=f"{metric} with its 95% interval", xlabel=metric)
    axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    return figure


def pairwise_tests(client, versions, labels):
    """A matrix (DataFrame, rows and columns the versions' labels): is the row's version
    significantly better than the column's on the same test examples? McNemar's exact test
    for classifiers, a paired bootstrap of the squared errors for regressions, on the test
    predictions each run logged. Versions tested on other splits, or without logged
    predictions, are not paired. None when fewer than two versions can be paired."""
    predictions = {}
    for label, version in zip(labels, versions, strict=True):
        run = client.get_run(version.run_id)
        found = logged_predictions(run, test_digest(run) or None)
        if found is not None:
            predictions[label] = found
    if len(predictions) < 2:
        return None
    cells = {label: {} for label in labels}
    for row in labels:
        for column in labels:
            cells[row][column] = _pair_cell(predictions.get(row), predictions.get(column), row == column)
    return pd.DataFrame(cells).T[labels]


def _pair_cell(row, column, same):
    if same:
        return "-"
    if row is None or column is None:
        return "no logged test predictions"
    if row["test_digest"] != column["test_digest"] or not np.array_equal(row["truth"], column["truth"]):
        return "other test split"
    pair = significance.paired_bootstrap if row["kind"] == "regression" else significance.paired_classifiers
    test = pair(row["truth"], row["predicted"], column["predicted"])
    if test.significant(PAIRWISE_ALPHA):
        verdict = "better"
    elif test.gain < 0 and test.p_value < PAIRWISE_ALPHA:
        verdict = "worse"
    else:
        verdict = "no significant difference"
    return f"{verdict} (p = {test.p_value:.2g})"


def _per_class(metric):
    return metric.startswith(schema.CLASS_RECALL_PREFIX)


def _as_number(text):
    """MLflow keeps params as text; numbers read back as numbers sort and format as such."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def inference_speed(model_uri):
    """(median ms to predict one example, examples per second at batch THROUGHPUT_BATCH)."""
    model = mlflow.keras.load_model(model_uri)
    shape = tuple(model.inputs[0].shape[1:])
    one, batch = np.zeros((1, *shape), "float32"), np.zeros((THROUGHPUT_BATCH, *shape), "float32")
    model.predict_on_batch(batch)  # the first call traces the graph
    timings = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        model.predict_on_batch(one)
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    model.predict_on_batch(batch)
    return 1000 * float(np.median(timings)), THROUGHPUT_BATCH / (time.perf_counter() - start)


def learning_curves_figure(client, versions, labels):
    """Each version's per-epoch curves overlaid: validation accuracy (or loss) and training loss."""
    histories = {label: _history(client, v.run_id) for label, v in zip(labels, versions, strict=True)}
    names = [n for n in CURVES if any(n in h for h in histories.values())][:2]
    figure, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for label, history in histories.items():
            if name in history:
                axis.plot(np.arange(1, len(history[name]) + 1), history[name], label=label, marker=".")
        axis.set(title=name, xlabel="epoch", ylabel=name)
        axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _history(client, run_id):
    history = {}
    for name in CURVES:
        points = client.get_metric_history(run_id, name)
        if points:
            history[name] = [p.value for p in sorted(points, key=lambda p: p.step)]
    return history


def confusion_figure(versions, labels):
    """The versions' test confusion matrices side by side, or None for regression."""
    from pipelines import reporting  # scikit-learn's display: imported when a figure is drawn

    matrices = {}
    for label, version in zip(labels, versions, strict=True):
        try:
            matrices[label] = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{schema.CONFUSION_MATRIX_ARTIFACT}")
        except Exception:
            continue
    if not matrices:
        return None
    figure, axes = plt.subplots(1, len(matrices), figsize=(4.5 * len(matrices), 4.8), squeeze=False)
    for axis, (label, data) in zip(axes[0], matrices.items(), strict=True):
        reporting.draw_confusion(axis, data["matrix"], data["labels"], label)
    figure.tight_layout()
    return figure


# --- the report -------------------------------------------------------------------------


def render_html(title, table, figures, pairwise=None):
    """A self-contained page: the table, the pairwise tests (a DataFrame, or None), then each
    figure ({name: PNG bytes}) embedded."""
    table_html = table.to_html(index=False, na_rep="", float_format=_number)  # pandas escapes the cells
    pairwise_html = pairwise.to_html() if pairwise is not None else ""
    return REPORT.get_template("compare_report.html").render(
        title=title, table=table_html, figures=figures, pairwise=pairwise_html, alpha=PAIRWISE_ALPHA
    )


def _number(value):
    return f"{value:.4g}"


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def run_comparison(spec, output, experiment):
    """Build the report for `spec`, write it locally and log it on a comparison run; return its path."""
    versions = resolve_versions(spec)
    client = mlflow.MlflowClient()
    labels = [f"{v.name} v{v.version}" + (f" ({CHAMPION})" if CHAMPION in v.aliases else "") for v in versions]
    table = pd.DataFrame([version_row(client, v) for v in versions])
    figures = {"learning_curves": learning_curves_figure(client, versions, labels)}
    intervals = intervals_figure(table, labels)
    if intervals is not None:
        figures = {"test_metric_intervals": intervals, **figures}
    matrices = confusion_figure(versions, labels)
    if matrices is not None:
        figures["confusion_matrices"] = matrices
    pairwise = pairwise_tests(client, versions, labels)
    page = render_html(f"Model comparison: {spec}", table, {name: _png(f) for name, f in figures.items()}, pairwise)

    path = Path(output) if output else REPORT_DIR / f"compare-{_slug(spec)}.html"
    # The page goes to a file beside `path` first: a bad path is refused before any experiment or
    # run exists, and `path` itself appears only once the comparison run has logged it all.
    draft = None
    try:
        if path.is_dir():
            raise InputError(f"output: {path} is a directory; give the report's file name, e.g. {path / 'report.html'}")
        draft = path.with_name(f".{path.name}.{os.getpid()}.part")
        path.parent.mkdir(parents=True, exist_ok=True)
        draft.write_text(page)
    except (OSError, ValueError) as error:  # ValueError: a name the file system refuses (a NUL)
        if draft is not None:
            with contextlib.suppress(OSError, ValueError):
                draft.unlink(missing_ok=True)
        raise InputError(f"output: cannot write {path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        tags = {schema.STEP_TAG: schema.COMPARE_STEP, schema.COMPARED_TAG: spec}
        experiment_id = _comparison_experiment(experiment)
        run_name = f"compare-{_slug(spec)}"
        with tracking.mlflow_run(run_name, tags, system_metrics_interval=0, experiment_id=experiment_id) as run:
            mlflow.log_param(schema.COMPARED_PARAM, spec)
            mlflow.log_text(page, schema.COMPARISON_REPORT_ARTIFACT)
            mlflow.log_text(table.to_csv(index=False), f"{schema.COMPARISON_FOLDER}/table.csv")
            if pairwise is not None:
                mlflow.log_text(pairwise.to_csv(), f"{schema.COMPARISON_FOLDER}/pairwise_tests.csv")
            for name, figure in figures.items():
                tracking.log_figure(figure, f"{schema.COMPARISON_FOLDER}/{name}.png")
            mlflow.set_tag(
                schema.DESCRIPTION_TAG,
                f"Comparison of `{spec}` ({len(table)} versions): the report is the artifact "
                f"`{schema.COMPARISON_REPORT_ARTIFACT}`, beside its table, paired tests and figures.",
            )
        draft.replace(path)
    finally:
        draft.unlink(missing_ok=True)
    # The console gets the headline columns; the report has them all.
    brief = table.drop(columns=[c for c in table if _per_class(c) or _is_interval_end(c) or c in LINEAGE_COLUMNS])
    print(brief.to_string(index=False, float_format=_number))
    if pairwise is not None:
        print(f"paired tests on the same test examples (row against column, alpha {PAIRWISE_ALPHA:g}):")
        print(pairwise.to_string())
    print(f"report: {path} (and {schema.COMPARISON_REPORT_ARTIFACT} on run {run.info.run_id})")
    tracking.print_links({"the comparison run": tracking.run_url(run.info.experiment_id, run.info.run_id)})
    return path, run.info.run_id


def _comparison_experiment(experiment):
    """The comparison run's experiment: the one asked for (one MLflow refuses is bad input),
    else `comparisons` of its own, not the training experiment MLFLOW_EXPERIMENT_ID may name
    (under `mlflow run`, the run it made)."""
    if experiment:
        return tracking.use_experiment(experiment, DEFAULT_EXPERIMENT)
    tracking.open_store()
    return None if os.environ.get("MLFLOW_RUN_ID") else tracking.experiment_of_its_own(DEFAULT_EXPERIMENT)


def _slug(spec):
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in spec).strip("-")[:80]
