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
from report import figures_table, met, stamp, versions, write_results  # benchmarks/report.py, beside this script

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
    after, ran_in, latest_rss, start = {}, {}, {}, time.monotonic()
    while process.poll() is None:
        workers, finished = trial_workers(journal)
        latest_rss |= {pid: rss for pid in workers if (rss := rss_mib(pid)) is not None}
        # A worker that has run its last trial exits at once: its last reading stands for it.
        for count, pid in enumerate(finished, start=1):
            after.setdefault(count, latest_rss.get(pid))
            ran_in.setdefault(count, pid)
        time.sleep(SAMPLE_SECONDS)
    if process.returncode != 0:
        raise RuntimeError(f"the {mode} sweep failed: {process.stderr.read()[-2000:]}")
    return {"after": after, "ran_in": ran_in, "minutes": (time.monotonic() - start) / 60}


def growth_by_process(result):
    """Each worker process's growth, from its second trial to its last, in the order they ran."""
    trials = {}
    for count in sorted(result["after"]):
        trials.setdefault(result["ran_in"][count], []).append(result["after"][count])
    return [rss[-1] / rss[1] - 1 for rss in trials.values() if len(rss) > 2]


def write_report(results, trials, command, measured):
    rows = []
    for mode, result in results.items():
        second, last = result["after"][2], result["after"][trials]
        growth, processes = last / second - 1, growth_by_process(result)
        if len(processes) > 1:
            detail = f"across {len(processes)} processes; within each " + ", ".join(f"{g:+.0%}" for g in processes)
        else:
            detail = f"{(last - second) / (trials - 2):.0f} MiB a trial"
        rows.append(
            (
                f"RSS growth, trial 2 to trial {trials}, {MODES[mode][0]}",
                f"{growth:+.1%} ({second:.0f} to {last:.0f} MiB, {detail}); peak {max(result['after'].values()):.0f} "
                f"MiB; {result['minutes']:.1f} min",
                f"< {MAX_GROWTH:.0%}, {met(growth < MAX_GROWTH)}",
                command,
                measured["date"],
                measured["machine"],
            )
        )
    lines = [
        f"# Sweep worker memory: {trials} `mnist_cnn` trials on {MAX_SAMPLES:,} MNIST images",
        "",
        *figures_table(rows),
        "",
        "## Method",
        "",
        f"One worker runs {trials} trials. After each, the resident set size of the process that ran it (VmRSS "
        f"in /proc, read every {SAMPLE_SECONDS} s) is taken when the study's journal first shows the trial "
        f"finished; a worker that has exited counts its last reading. {versions()}.",
        "",
        "RSS after each trial (MiB):",
        "",
    ]
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
    write_report(results, args.trials, shlex.join(["python", "benchmarks/sweep_memory.py", *sys.argv[1:]]), stamp())
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
