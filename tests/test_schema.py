"""The run schema is written once: no module but pipelines/schema.py spells a name it holds.

A name such as `optuna.study_name` written in two modules drifts apart one day, and the runs
of one then stop matching the searches of the other. The check reads the source. Names with
a namespace (`process.pid`, `figures/...`) are looked for in every string; prefixes
(`best_trial_`) in every literal that is the whole prefix; plain words (`task`, `trial`,
`interval`) only where they are a run's tags, params, metrics or artifacts: a store call's
arguments, a `tags` dict, a lookup in a run's data, a search filter.
"""

import ast
import re
from pathlib import Path

from pipelines import schema

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("experiments/**/*.py")])
STORE_CALLS = {
    "set_tag",
    "set_tags",
    "log_param",
    "log_params",
    "log_metric",
    "log_metrics",
    "log_artifact",
    "log_dict",
    "log_text",
    "log_figure",
    "set_user_attr",
    "set_experiment_tag",
    "set_model_version_tag",
}
LOOKED_UP = {"tags", "params", "metrics", "user_attrs"}  # run.data.tags.get(name), tags[name], ...
FILTER_NAME = re.compile(r"\b(?:tags|params|metrics)\.`?([\w./]+)")


def schema_names():
    names = set()
    for name, value in vars(schema).items():
        if name.startswith("_") or not name.isupper():
            continue
        values = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else [value]
        names |= {text for text in values if isinstance(text, str)}
    return names


NAMES = schema_names()
PREFIXES = {name for name in NAMES if name.endswith(("_", "."))}  # spelled as the whole literal: f"{prefix}{x}"
NAMESPACED = {name for name in NAMES - PREFIXES if re.search(r"[./]", name)}
WORDS = NAMES - PREFIXES - NAMESPACED


def docstrings(tree):
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def text(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _last_name(node):
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def words_in_store_roles(tree):
    """(line, word) of every schema word used as a stored name: a store call's argument, a key of
    a run's tags (or params, metrics, attributes) looked up, or a key of a dict of tags."""
    found = []
    for node in ast.walk(tree):
        candidates = []
        if isinstance(node, ast.Call):
            called = _last_name(node.func)
            if called in STORE_CALLS:
                candidates += node.args
                for argument in node.args:
                    if isinstance(argument, ast.Dict):
                        candidates += argument.keys
            if called in ("get", "__contains__") and _last_name(node.func.value) in LOOKED_UP and node.args:
                candidates.append(node.args[0])
            for keyword in node.keywords:
                if keyword.arg == "tags" and isinstance(keyword.value, ast.Dict):
                    candidates += keyword.value.keys
        elif isinstance(node, ast.Subscript) and _last_name(node.value) in LOOKED_UP:
            candidates.append(node.slice)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            if any("tags" in (_last_name(target) or "") for target in node.targets):
                candidates += node.value.keys
        found += [(candidate.lineno, text(candidate)) for candidate in candidates if text(candidate) in WORDS]
    return found


def literal_uses(path):
    tree = ast.parse(path.read_text())
    skipped = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        value = text(node)
        if value is None or id(node) in skipped:
            continue
        found += [(node.lineno, name) for name in NAMESPACED if name in value]
        if value in PREFIXES:
            found.append((node.lineno, value))
        found += [(node.lineno, name) for name in FILTER_NAME.findall(value) if name in NAMES]
    return found + words_in_store_roles(tree)


def test_the_schema_holds_the_names_runs_are_searched_by():
    assert {"optuna.study_name", "process.heartbeat", "evaluation/test_predictions.npz", "task"} <= NAMES
    assert "task" in WORDS and "optuna.study_name" in NAMESPACED and "best_trial_" in PREFIXES


def test_no_module_spells_a_name_of_the_run_schema():
    spelled = [
        f"{path.relative_to(ROOT)}:{line}: {name!r}"
        for path in SOURCES
        if path.name != "schema.py"
        for line, name in sorted(set(literal_uses(path)))
    ]
    assert not spelled, "names the run schema holds, spelled outside pipelines/schema.py:\n" + "\n".join(spelled)


def test_the_check_finds_a_spelled_name(tmp_path):
    source = tmp_path / "spelled.py"
    source.write_text(
        "def trials(client, run, study):\n"
        '    """Docstrings may name `optuna.study_name`."""\n'
        '    client.set_tag(run.info.run_id, "sweep", "trial")\n'
        '    run.data.tags.get("entry_point")\n'
        '    tags = {"variant": "cnn"}\n'
        '    client.log_metric(run.info.run_id, f"best_trial_{study}", 1)\n'
        "    return f\"tags.`optuna.study_name` = '{study}'\"\n"
    )
    found = sorted(set(literal_uses(source)))
    assert found == [
        (3, "sweep"),
        (3, "trial"),
        (4, "entry_point"),
        (5, "variant"),
        (6, "best_trial_"),
        (7, "optuna.study_name"),
    ]
