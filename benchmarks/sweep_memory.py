"""Does a sweep worker's memory grow with its trials? RSS after trial 2 and after trial 20.

    python benchmarks/sweep_memory.py [--data ../shared/data/mnist.npz] [--trials 20] [--modes ...]

A 20-trial `mnist_cnn` sweep on 5,000 MNIST images with one worker, three ways: as shipped
(`keras.backend.clear_session()` before every trial, and a fresh worker process every
`trials_per_process` trials); with one process for all trials (`--trials_per_process 0`);
and with one process and `clear_session()` disabled. After each trial, the resident set size
of the process that ran it is read from /proc: the study's journal says when a trial has
finished and which process ran it. Results go to benchmarks/sweep_memory.md.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from report import machine, write_results  # benchmarks/report.py, beside this script

PROJECT = Path(__file__).resolve().parents[1]
OUT = PROJECT / "benchmarks" / "out" / "sweep_memory"
RESULTS = PROJECT / "benchmarks" / "sweep_memory.md"
MAX_SAMPLES = 5000
SAMPLE_SECONDS = 0.1
MAX_GROWTH = 0.10  # RSS after the last trial may exceed RSS after trial 2 by at most this share
# The sweep command, run through this snippet so that one mode can disable `clear_session`.
RUNNER = """
import sys, keras
if sys.argv[1] == "no_clear_session":  # its worker trains in this process (--trials_per_process 0)
    keras.backend.clear_session = lambda *args, **kwargs: None
from pipelines.cli import main
sys.exit(main(sys.argv[2:]))
"""
# mode: (what it is, the sweep's own options)
MODES = {
    "shipped": ("as shipped: `clear_session()` before every trial, a fresh process every 10 trials", []),
    "one_process": ("one process for all trials (`--trials_per_process 0`)", ["--trials_per_process", "0"]),
    "no_clear_session": ("one process, `clear_session()` disabled", ["--trials_per_process", "0"]),
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def rss_mib(pid):
    """The process's resident set size, or None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)


def trial_workers(journal):
    """The pids of the processes that took a trial so far, and those that ran each finished trial, in
    the order the trials finished."""
    if not journal.exists():
        return set(), []
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        study = optuna.load_study(study_name="memory", storage=storage)
    except KeyError:
        return set(), []
    trials = study.get_trials(deepcopy=False)
    # A trial's worker is set just after it is created: one read may see the trial without it.
    pid = {t.number: int(t.user_attrs["worker"].rpartition(":")[2]) for t in trials if "worker" in t.user_attrs}
    finished = sorted((t for t in trials if t.state in FINISHED), key=lambda t: t.datetime_complete)
    return set(pid.values()), [pid[trial.number] for trial in finished]


def run_sweep(mode, data, trials):
    """{trial count: RSS in MiB of the process that ran that trial, when it finished}, and the wall time."""
    folder = OUT / mode
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    journal = folder / "optuna.journal"
    command = [
        *(sys.executable, "-c", RUNNER, mode, "sweep", "--task", "mnist_cnn", "--data", str(data)),
        *("--max_samples", str(MAX_SAMPLES), "--n_trials", str(trials), "--storage", str(journal)),
        *("--study_name", "memory", "--experiment", "sweep-memory", *MODES[mode][1]),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    process = subprocess.Popen(
        command, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    after, latest_rss, start = {}, {}, time.monotonic()
    while process.poll() is None:
        workers, finished = trial_workers(journal)
        latest_rss |= {pid: rss for pid in workers if (rss := rss_mib(pid)) is not None}
        # A worker that has run its last trial exits at once: its last reading stands for it.
        for count, pid in enumerate(finished, start=1):
            after.setdefault(count, latest_rss.get(pid))
        time.sleep(SAMPLE_SECONDS)
    if process.returncode != 0:
        raise RuntimeError(f"the {mode} sweep failed: {process.stderr.read()[-2000:]}")
    return {"after": after, "minutes": (time.monotonic() - start) / 60}


def write_report(results, trials, command):
    lines = [
        f"# Sweep worker memory: {trials} `mnist_cnn` trials on {MAX_SAMPLES:,} MNIST images",
        "",
        f"Command: `{command}`",
        "",
        machine(),
        "",
        "Resident set size of the process that ran the trial, read when the study's journal first shows "
        f"the trial finished. Target: growth from trial 2 to trial {trials} under {MAX_GROWTH:.0%}.",
        "",
        f"| Worker | RSS after trial 2 | RSS after trial {trials} | Growth | Peak RSS | Wall time | Target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, result in results.items():
        second, last = result["after"][2], result["after"][trials]
        growth = last / second - 1
        met = "yes" if growth < MAX_GROWTH else "**no**"
        lines.append(
            f"| {MODES[mode][0]} | {second:.0f} MiB | {last:.0f} MiB | {growth:+.1%} "
            f"| {max(result['after'].values()):.0f} MiB | {result['minutes']:.1f} min | {met} |"
        )
    lines += ["", "RSS after each trial (MiB):", ""]
    for mode, result in results.items():
        lines.append(f"- {mode}: " + ", ".join(f"{rss:.0f}" for _, rss in sorted(result["after"].items())))
    write_results(RESULTS, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(PROJECT.parent / "shared" / "data" / "mnist.npz"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()
    results = {mode: run_sweep(mode, args.data, args.trials) for mode in args.modes}
    write_report(results, args.trials, shlex.join(["python", "benchmarks/sweep_memory.py", *sys.argv[1:]]))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
