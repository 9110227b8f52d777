"""Compare registered model versions side by side: metrics, params, size, speed, curves.

    python -m pipelines compare --model mnist_cnn                       # every version
    python -m pipelines compare --model 'mnist_cnn*@champion'           # what each MNIST CNN variant bought

`--model` takes comma-separated specs: `name` (all its versions), `name/3`, `name@champion`;
`*` in a name matches several registered models. The report is an HTML page with a
table, overlaid learning curves and the confusion matrices side by side. It is logged on
a `compare-...` run (HTML, PNG and CSV under `comparison/`) and written to a local file.
"""

import base64
import fnmatch
import io
import re
import time
from pathlib import Path

import jinja2
import lazy_loader as lazy
import numpy as np

from experiments import TASKS, InputError, Param
from pipelines import tracking
from pipelines.params import MAIN_ENTRY_POINT, NAME_PATTERN, TRAINING_PARAMS
from pipelines.registry import CHAMPION, test_digest

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
SETTINGS = {
    "model": Param(
        str, MAIN_ENTRY_POINT, "comma-separated name (every version), name/3, name@champion, 'mnist_cnn*@champion'"
    ),
    "output": Param(str, "", "the local HTML report; empty: reports/compare-<model>.html"),
    "experiment": Param(
        str,
        "",
        "the MLflow experiment of the comparison run; empty: $MLFLOW_EXPERIMENT_NAME (or _ID), else comparisons",
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
        **{name: value for name, value in sorted(metrics.items()) if name.startswith("test_") and not _per_class(name)},
        **{name: _as_number(params[name]) for name in KEY_PARAMS if name in params},
        "num_params": int(params["num_params"]) if "num_params" in params else None,
        "train_time_s": metrics.get("train_time_s"),
        "latency_ms": latency_ms,
        "images_per_s": throughput,
        **{name: value for name, value in sorted(metrics.items()) if _per_class(name)},
        "run_id": run.info.run_id,
        "study": run.data.tags.get("optuna.study_name", ""),
        "test_dataset_digest": test_digest(run),
        "git_commit": run.data.tags.get(tracking.GIT_COMMIT_TAG, "")[:10],
    }
    return row


def _per_class(metric):
    return metric.startswith("test_recall_")


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
            matrices[label] = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/evaluation/confusion_matrix.json")
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


def render_html(title, table, figures):
    """A self-contained page: the table, then each figure ({name: PNG bytes}) embedded."""
    table_html = table.to_html(index=False, na_rep="", float_format=_number)  # pandas escapes the cells
    return REPORT.get_template("compare_report.html").render(title=title, table=table_html, figures=figures)


def _number(value):
    return f"{value:.4g}"


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def run_comparison(spec, output="", experiment=""):
    """Build the report for `spec`, write it locally and log it on a comparison run; return its path."""
    versions = resolve_versions(spec)
    client = mlflow.MlflowClient()
    labels = [f"{v.name} v{v.version}" + (f" ({CHAMPION})" if CHAMPION in v.aliases else "") for v in versions]
    table = pd.DataFrame([version_row(client, v) for v in versions])
    figures = {"learning_curves": learning_curves_figure(client, versions, labels)}
    matrices = confusion_figure(versions, labels)
    if matrices is not None:
        figures["confusion_matrices"] = matrices
    page = render_html(f"Model comparison: {spec}", table, {name: _png(f) for name, f in figures.items()})

    path = Path(output) if output else REPORT_DIR / f"compare-{_slug(spec)}.html"
    try:  # before the run starts: a bad path leaves no run behind
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page)
    except OSError as error:
        raise InputError(f"output: cannot write {path}: {error.strerror or error}") from None
    tracking.use_experiment(experiment, DEFAULT_EXPERIMENT)
    with tracking.mlflow_run(run_name=f"compare-{_slug(spec)}", tags={"step": "compare", "compared": spec}) as run:
        mlflow.log_param("models", spec)
        mlflow.log_text(page, "comparison/report.html")
        mlflow.log_text(table.to_csv(index=False), "comparison/table.csv")
        for name, figure in figures.items():
            tracking.log_figure(figure, f"comparison/{name}.png")
    # The console gets the headline columns; the report has them all.
    brief = table.drop(columns=[c for c in table if _per_class(c) or c in LINEAGE_COLUMNS])
    print(brief.to_string(index=False, float_format=_number))
    print(f"report: {path} (and comparison/report.html on run {run.info.run_id})")
    return path, run.info.run_id


def _slug(spec):
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in spec).strip("-")[:80]
