"""The crash-consistency sweep's figures, written to benchmarks/crash_consistency.md.

    python -m pytest -m crash tests/test_crash_consistency.py   # every case; writes benchmarks/out/crash_consistency/
    python benchmarks/crash_consistency.py                      # the figures, from what the sweep wrote

Run the second on the machine that ran the sweep: the figures name it, and the date the
sweep's last outcome was written.
"""

import datetime
import json
from collections import defaultdict
from pathlib import Path

from report import cpu, figures_table, met, write_results  # benchmarks/report.py, beside this script

OUTCOMES = Path(__file__).resolve().parent / "out" / "crash_consistency"
REPORT = Path(__file__).resolve().parent / "crash_consistency.md"
SWEEP = "python -m pytest -m crash tests/test_crash_consistency.py"
STORES = {"server": "through a real `mlflow server`", "sqlite": "on a SQLite file"}


def tally(outcomes):
    """{(store, variant, fault): calls, cases, broken} for the trainings, and {fault: steps, broken} for a
    new store's creation, from the sweep's outcome files."""
    training = defaultdict(lambda: {"calls": 0, "cases": 0, "broken": 0})
    creation = defaultdict(lambda: {"steps": 0, "broken": 0})
    for path in sorted(outcomes.glob("*-*-*-*.json")):
        report = json.loads(path.read_text())
        if path.name.startswith("store-creation"):
            creation[report["fault"]]["steps"] = report["statements"]
            creation[report["fault"]]["broken"] += len(report["broken"])
            continue
        row = training[(report["store"], report["variant"], report["fault"])]
        row["calls"] = report["calls"]
        row["cases"] += len(report["cases"])
        row["broken"] += sum(1 for case in report["cases"] if case["problems"])
    return dict(sorted(training.items())), dict(sorted(creation.items()))


def write_report(training, creation, measured):
    def row(figure, cases, broken):
        return (
            figure,
            f"{broken} of {cases} cases",
            f"0, {met(broken == 0)}",
            SWEEP,
            measured["date"],
            measured["machine"],
        )

    rows = []
    for store in sorted({store for store, _, _ in training}):
        mine = [counts for (where, _, _), counts in training.items() if where == store]
        rows.append(
            row(
                f"A training killed, terminated or failed just before each call to the stores, "
                f"{STORES.get(store, store)}: cases that broke a promise",
                sum(counts["cases"] for counts in mine),
                sum(counts["broken"] for counts in mine),
            )
        )
    if creation:
        rows.append(
            row(
                "A new SQLite store's first command killed or terminated before each step of the store's "
                "creation: cases that broke a promise",
                sum(counts["steps"] for counts in creation.values()),
                sum(counts["broken"] for counts in creation.values()),
            )
        )
    lines = [
        "# Crash consistency: a training stopped or failed at every call it makes to the stores",
        "",
        *figures_table(rows),
        "",
        "By store, variant and fault:",
        "",
        "| store | variant | fault | calls | cases | cases that broke a promise |",
        "|---|---|---|---|---|---|",
    ]
    for (store, variant, fault), counts in training.items():
        lines.append(f"| {store} | {variant} | {fault} | {counts['calls']} | {counts['cases']} | {counts['broken']} |")
    for fault, counts in creation.items():
        steps = counts["steps"]
        lines.append(f"| new SQLite store | its first command | {fault} | {steps} | {steps} | {counts['broken']} |")
    write_results(REPORT, "\n".join(lines))


def main():
    files = list(OUTCOMES.glob("*.json"))
    if not files:
        raise SystemExit(f"no outcomes in {OUTCOMES}: run `{SWEEP}` first")
    newest = max(path.stat().st_mtime for path in files)
    measured = {"date": datetime.date.fromtimestamp(newest).isoformat(), "machine": cpu()}
    write_report(*tally(OUTCOMES), measured)
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
