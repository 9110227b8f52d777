"""The crash-consistency sweep's figures, as the table in benchmarks/crash_consistency.md.

python -m pytest -m crash tests/test_crash_consistency.py   # every case; writes benchmarks/out/crash_consistency/
python benchmarks/crash_consistency.py                      # the table of what it found
"""

import json
from collections import defaultdict
from pathlib import Path

OUTCOMES = Path(__file__).resolve().parent / "out" / "crash_consistency"


def main():
    training = defaultdict(lambda: {"calls": 0, "cases": 0, "broken": 0})
    for path in sorted(OUTCOMES.glob("*-*-*-*.json")):
        if path.name.startswith("store-creation"):
            continue
        report = json.loads(path.read_text())
        row = training[(report["store"], report["variant"], report["fault"])]
        row["calls"] = report["calls"]
        row["cases"] += len(report["cases"])
        row["broken"] += sum(1 for case in report["cases"] if case["problems"])
    print("| store | variant | fault | calls | cases | cases that broke a promise |")
    print("|---|---|---|---|---|---|")
    for (store, variant, fault), row in sorted(training.items()):
        print(f"| {store} | {variant} | {fault} | {row['calls']} | {row['cases']} | {row['broken']} |")
    creation = defaultdict(lambda: {"statements": 0, "broken": 0})
    for path in sorted(OUTCOMES.glob("store-creation-*.json")):
        report = json.loads(path.read_text())
        creation[report["fault"]]["statements"] = report["statements"]
        creation[report["fault"]]["broken"] += len(report["broken"])
    for fault, row in sorted(creation.items()):
        steps = row["statements"]
        print(f"| new SQLite store | its first command | {fault} | {steps} | {steps} | {row['broken']} |")


if __name__ == "__main__":
    main()
