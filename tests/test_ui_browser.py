"""The MLflow UI as headless Chromium renders it from a real `mlflow server`: our runs, their
system metrics and the champion."""

import html
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from pipelines.cli import main
from tests.helpers import free_port, options, wait_until_serving

CHROMIUM = shutil.which("chromium")  # Debian's `chromium` package; nothing downloads a browser
MODEL, ALIAS = "xor", "champion"
SERVER_START_S = 60  # a cold `mlflow server` starts in seconds; the rest is for a loaded machine
# Virtual time skips idle waits and pauses while fetches are pending, so the UI's requests
# finish inside the budget, and a generous one costs little real time.
VIRTUAL_TIME_BUDGET_MS = 30_000
CHROMIUM_TIMEOUT_S = 120
WINDOW_SIZE = "1400,900"
MIN_SCREENSHOT_BYTES = 5_000  # a blank or error page compresses far below this
# Where the screenshots of what a user sees are kept (README's, under docs/ui): set to a folder to keep them.
SCREENSHOTS_ENV = "UI_SCREENSHOTS"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # as root, and in containers without user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    # Only 127.0.0.1: no proxy, less background traffic, and every other host unresolvable
    # (Chromium still tries Google's update and account hosts; this stops them).
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture
def chromium():
    return CHROMIUM  # present: the `browser` marker skips the test (or fails it under CI) when it is not


@pytest.fixture
def ui_server(store, tmp_path, monkeypatch):
    """`mlflow server` (UI and REST API) over the test's SQLite store; yields its URL."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # only 127.0.0.1 traffic
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"]),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: uvicorn and job workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", process, timeout=SERVER_START_S)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def render(chromium, url, screenshot, profile, window_size=WINDOW_SIZE):
    """The DOM of `url` once the page settled, saving a screenshot of it at the same moment."""
    completed = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window_size}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
    )
    # Chromium exits 0 even when the page fails to load, so the screenshot and DOM are what count.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert screenshot.is_file(), completed.stderr[-3000:]
    assert screenshot.stat().st_size > MIN_SCREENSHOT_BYTES
    with Image.open(screenshot) as image:
        image.verify()  # a complete, decodable PNG
    assert image.format == "PNG"
    return completed.stdout


def visible_text(dom):
    """The page's text as a user reads it: no scripts or styles, entities decoded, spaces collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


@pytest.mark.slow
@pytest.mark.browser
def test_the_ui_shows_our_runs_the_champion_and_the_links_the_commands_print(
    chromium, ui_server, store, tiny, tmp_path, capsys, monkeypatch
):
    """One server, two parts: what the store holds, then what a user reaches from the printed links."""
    runs_and_champion(chromium, ui_server, store, tmp_path)
    capsys.readouterr()  # the links checked next are those of the second part's commands
    printed_links(chromium, ui_server, store, tiny, tmp_path, capsys, monkeypatch)


def runs_and_champion(chromium, ui_server, store, tmp_path):
    """The experiment's runs, a run's system metrics, and the registered model's champion."""
    # The first trains for a few seconds, sampling system metrics every second.
    assert main(["train", "--task", "xor", "--epochs", "60", "--system_metrics_interval", "1"]) == 0
    assert main(["train", "--task", "xor", "--epochs", "2"]) == 0
    experiment_id = os.environ["MLFLOW_EXPERIMENT_ID"]
    runs = store.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    assert main(["promote", "--task", MODEL, "--run_id", runs[0].info.run_id]) == 0

    # The experiment's "Training runs" tab (its bare route opens the GenAI overview instead).
    runs_page = f"{ui_server}/#/experiments/{experiment_id}/runs"
    dom = render(chromium, runs_page, tmp_path / "runs.png", tmp_path / "profile")
    for run in runs:  # each run's row links to it under its name
        href = f"#/experiments/{experiment_id}/runs/{run.info.run_id}"
        link = f'href="{re.escape(href)}">(?:<[^>]*>)*{re.escape(run.info.run_name)}<'
        assert re.search(link, dom), f"run {run.info.run_name} ({run.info.run_id}) not listed"

    # The run's "System metrics" tab has a chart for each metric MLflow sampled.
    sampled = runs[0]
    system_metrics = [name for name in sampled.data.metrics if name.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system_metrics
    page = f"{ui_server}/#/experiments/{experiment_id}/runs/{sampled.info.run_id}/system-metrics"
    text = visible_text(render(chromium, page, tmp_path / "system_metrics.png", tmp_path / "profile"))
    assert f"System metrics ({len(system_metrics)})" in text, text[:2000]

    dom = render(chromium, f"{ui_server}/#/models/{MODEL}", tmp_path / "model.png", tmp_path / "profile")
    text = visible_text(dom)
    assert "Version 1" in text and f"@ {ALIAS}" in text, text[:2000]

    # The version's page says why it is champion, and links the run it was trained by.
    page = f"{ui_server}/#/models/{MODEL}/versions/1"
    dom = render(chromium, page, tmp_path / "version.png", tmp_path / "profile")
    text = visible_text(dom)
    assert "Promoted to champion" in text and "no champion yet; test_accuracy 1.0000 (95% interval" in text, text[:3000]
    assert f"/runs/{runs[0].info.run_id}" in dom and f"Trained by run {runs[0].info.run_name}" in text
    keep_screenshot(tmp_path / "version.png", "version.png")


def keep_screenshot(path, name):
    """Copy a screenshot to $UI_SCREENSHOTS (the docs' images are made so), when it is set."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / name)


def printed_link(out, what):
    """The URL a command printed for `what` (`  what: URL`), the last one if several."""
    found = re.findall(rf"^  {re.escape(what)}: (\S+)$", out, flags=re.M)
    assert found, out[-3000:]
    return found[-1]


def rows_in_order(dom):
    """The run ids of the runs table's rows, top to bottom."""
    rows = dict(re.findall(r'row-index="(\d+)" row-id="([0-9a-f]{32})"', dom))
    return [rows[index] for index in sorted(rows, key=int)]


def header_cells(dom):
    """{column id: (its position, its width in pixels)} of the runs table's column headers."""
    cells = {}
    for tag in re.findall(r'<div[^>]*class="ag-header-cell[^>]*>', dom):
        attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        width = re.search(r"width: (\d+)px", attributes.get("style", ""))
        if "col-id" in attributes and width:
            cells[attributes["col-id"]] = (int(attributes["aria-colindex"]), int(width.group(1)))
    return cells


def printed_links(chromium, ui_server, store, tiny, tmp_path, capsys, monkeypatch):
    """The printed link opens the comparison, and the sweep links its best trial. What a user
    meets: tiny runs of two tasks and a small sweep, through a real `mlflow server`, each task
    in its own experiment; the links the commands print, opened in Chromium."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ui_server)
    mlflow.set_tracking_uri(ui_server)

    def command(*argv):
        # Each in the experiment named after its task, as in a fresh process (MLflow exports the
        # experiment a command chose to the environment).
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        assert main(list(map(str, argv))) == 0

    for seed in (1, 2):  # two runs that differ only by their seed
        command("train", *tiny.argv("churn", epochs=2, seed=seed))
    command("train", *tiny.argv("xor", epochs=2))
    settings = options(storage=tmp_path / "optuna.journal", n_trials=3, study_name="churn-sweep")
    command("sweep", *tiny.argv("churn", epochs=2), *settings)
    out = capsys.readouterr().out
    churn = store.get_experiment_by_name("churn")
    runs = store.search_runs([churn.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "study"]
    seeds = [run for run in runs if "sweep" not in run.data.tags]
    assert len(seeds) == 2 and seeds[0].info.run_name != seeds[1].info.run_name
    assert store.search_runs([store.get_experiment_by_name("xor").experiment_id])

    # The link the sweep printed opens the runs table in the task's comparison view, not the GenAI overview.
    link = printed_link(out, "compare the runs")
    assert link.startswith(f"{ui_server}/#/experiments/{churn.experiment_id}/runs?workflowType=machine_learning&")
    dom = render(chromium, link, tmp_path / "comparison.png", tmp_path / "profile")
    keep_screenshot(tmp_path / "comparison.png", "comparison.png")
    text = visible_text(dom)
    assert "Compare churn runs" in text and "Sort: test_accuracy" in text, text[:3000]
    # Trainings with a test result only: the seeds and the finished trials, not the sweep's own run.
    trainings = [run for run in runs if "test_accuracy" in run.data.metrics]
    shown = {run.info.run_id for run in trainings}
    assert parent.info.run_id not in shown and {run.info.run_id for run in seeds} < shown
    order = rows_in_order(dom)
    assert sorted(order) == sorted(run.info.run_id for run in trainings)
    by_id = {run.info.run_id: run for run in trainings}
    values = [by_id[run_id].data.metrics["test_accuracy"] for run_id in order]
    assert values == sorted(values, reverse=True), values  # best first
    # The run's name whole, then the headline metric and its interval side by side, wide enough to read.
    columns = header_cells(dom)
    metric, interval = columns["metrics.`test_accuracy`"], columns["tags.`interval`"]
    assert interval[0] == metric[0] + 1 and interval[1] >= 130 and columns["attributes.`Run Name`"][1] >= 260
    for run in trainings:
        low, high = (run.data.metrics[f"test_accuracy_ci_{end}"] for end in ("low", "high"))
        assert run.data.tags["interval"] == f"{low:.4f}-{high:.4f}" and run.data.tags["interval"] in text
        assert run.info.run_name in text and f">{run.data.metrics['test_accuracy']:.4g}<" in dom.replace("</span>", "<")

    # Its chart view opens on the headline charts: the test metric first, the other metrics after.
    dom = render(chromium, f"{link}&compareRunsMode=CHART", tmp_path / "charts.png", tmp_path / "profile")
    keep_screenshot(tmp_path / "charts.png", "charts.png")
    text = visible_text(dom)
    assert text.index("Headline (4)") < text.index("Model metrics"), text[:3000]
    assert re.search(r"Headline \(4\) Add chart test_accuracy [\d.]+ ", text), text[:3000]

    # The sweep's run page: its description links the best trial's run.
    best_run_id = parent.data.tags["best.run_id"]
    assert printed_link(out, "its best trial").endswith(f"/runs/{best_run_id}?workflowType=machine_learning")
    page = printed_link(out, "the sweep")
    # Tall enough to show the description below the run's details.
    dom = render(chromium, page, tmp_path / "sweep.png", tmp_path / "profile", window_size="1400,1500")
    keep_screenshot(tmp_path / "sweep.png", "sweep.png")
    assert f'href="#/experiments/{churn.experiment_id}/runs/{best_run_id}"' in dom
