"""README and the manual in docs/ say what runs: every `python -m pipelines` and `mlflow run`
line in a ```bash block parses with the real command line, every ```console block prints
what it shows, and README's entry-point tables are today's declarations."""

import re
import shlex

import pytest
import yaml

from pipelines import cli, mlproject
from tests.helpers import PROJECT

PAGES = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")  # <run id>, <id>: the user's own value
PLACEHOLDER_VALUE = "0123456789abcdef0123456789abcdef"  # shaped like an MLflow run id
SHELL_OPERATORS = {"&", "&&", "||", ";", "|"}
PROJECT_COMMAND = re.compile(r"python -m pipelines |mlflow run ")  # not docker, curl, mlflow ui, ...


def blocks(language, holding=re.compile("")):
    """(page, block) for every fenced block of `language` on every page whose text matches `holding`."""
    found = []
    for page in PAGES:
        for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.M | re.S):
            if holding.search(block):
                found.append(pytest.param(page, block, id=f"{page.name}:{block.splitlines()[0][:60]}"))
    return found


def shell_lines(block):
    """The block's command lines, continuations joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def project_argv(line):
    """Each `python -m pipelines ...` on `line` as the words after `python -m pipelines`, and each
    `mlflow run` of this project as the same words its MLproject entry point would run."""
    words = shlex.split(PLACEHOLDER.sub(PLACEHOLDER_VALUE, line), comments=True)
    commands, current = [], []
    for word in [*words, ";"]:
        if word in SHELL_OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    found = []
    for words in commands:
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value before the command
            words = words[1:]
        if len(words) >= 3 and words[0].endswith("python") and words[1:3] == ["-m", "pipelines"]:
            found.append(words[3:])
        elif words[:2] == ["mlflow", "run"]:
            found.append(mlflow_run_argv(words[2:]))
    return found


def mlflow_run_argv(words):
    """`mlflow run <project> -e NAME -P a=b ...` as the words its entry point's command gets."""
    project, entry_point, params, words = words[0], "main", [], list(words[1:])
    while words:
        word = words.pop(0)
        if word in ("-e", "--entry-point"):
            entry_point = words.pop(0)
        elif word in ("-P", "--param-list"):
            params.append(words.pop(0))
        elif word.startswith("-") and words and not words[0].startswith("-"):
            words.pop(0)  # another option of mlflow run and its value: --env-manager local, -A gpus=all
    spec = yaml.safe_load((PROJECT / project / "MLproject").read_text())["entry_points"]
    if entry_point not in spec:
        raise ValueError(f"mlflow run {project} has no entry point {entry_point}")
    fixed = [word for word in spec[entry_point]["command"].split() if "{" not in word]
    return fixed[3:] + [f"--{param}" for param in params]


@pytest.mark.parametrize(("page", "block"), blocks("bash", holding=PROJECT_COMMAND))
def test_every_project_command_in_the_docs_parses(page, block):
    for line in shell_lines(block):
        try:
            for argv in project_argv(line):
                try:
                    cli.parse_command_line(argv)
                except SystemExit as finished:  # --help
                    assert finished.code == 0, line
        except Exception as error:
            pytest.fail(f"{page.name}: `{line.strip()}` does not run as written: {error}")


def expected_runs(block):
    """(argv, [lines expected in order, '...' between groups]) for each `$ ` command of a console block."""
    runs = []
    for line in block.splitlines():
        if line.startswith("$ "):
            argvs = project_argv(line[2:])
            assert len(argvs) == 1, f"a console block runs one `python -m pipelines` command a line: {line}"
            runs.append((argvs[0], []))
        else:
            assert runs, f"output before any `$ ` command: {line}"
            runs[-1][1].append(line.rstrip())
    return runs


def shows(output, expected):
    """Whether `expected`'s groups (split at '...') appear in `output` in order, each as consecutive lines."""
    groups, group = [], []
    for line in expected:
        if line == "...":
            groups.append(group)
            group = []
        else:
            group.append(line)
    groups.append(group)
    lines, at = [line.rstrip() for line in output.splitlines()], 0
    for group in filter(None, groups):
        at = next((i for i in range(at, len(lines)) if lines[i : i + len(group)] == group), None)
        if at is None:
            return False
        at += len(group)
    return True


@pytest.mark.parametrize(("page", "block"), blocks("console"))
def test_every_console_block_prints_what_it_shows(page, block, store, capsys, monkeypatch):
    monkeypatch.chdir(PROJECT)
    for argv, expected in expected_runs(block):
        cli.main(argv)
        captured = capsys.readouterr()
        output = captured.out + captured.err
        assert shows(output, expected), f"{page.name}: `python -m pipelines {' '.join(argv)}` printed:\n{output}"


def test_the_manual_shows_what_its_commands_print():
    pages = {page.name for page, _ in (param.values for param in blocks("console"))}
    assert {"running.md", "sweeps.md", "registry.md", "data.md"} <= pages


def test_the_output_check_needs_each_group_whole_and_in_order():
    output = "a\nb\nc\nd\n"
    assert shows(output, ["a", "b", "...", "d"])
    assert not shows(output, ["a", "c"])  # not consecutive
    assert not shows(output, ["d", "...", "a"])  # not in order
    assert not shows(output, ["error: nothing like this"])


def test_an_unknown_option_in_the_docs_is_caught():
    (argv,) = project_argv("python -m pipelines train --task churn --epoch 3   # a typo")
    with pytest.raises(Exception, match="epoch: not a parameter"):
        cli.parse_command_line(argv)
    (argv,) = project_argv("mlflow run . -e churn --env-manager local -P epoch=3")
    with pytest.raises(Exception, match="epoch: not a parameter"):
        cli.parse_command_line(argv)


def test_readme_entry_point_tables_are_todays_declarations():
    readme = mlproject.README.read_text()
    assert mlproject.entry_point_table() in readme, "run `python -m pipelines.mlproject`"
    assert mlproject.with_table(readme) == readme


def test_a_readme_without_the_tables_markers_is_refused():
    with pytest.raises(SystemExit, match="markers"):
        mlproject.with_table("# README\n")


def test_readme_is_a_landing_page_with_every_job_early():
    lines = mlproject.README.read_text().splitlines()
    assert len(lines) <= 200
    first = {job: next(i for i, line in enumerate(lines, 1) if pattern in line) for job, pattern in JOBS.items()}
    assert max(first.values()) <= 120, first


JOBS = {
    "train a variant": "-e mnist_cnn_",
    "open the UI": "mlflow ui",
    "sweep": "-e sweep",
    "promote": "-e promote",
    "serve": "mlflow models serve",
    "reap": "pipelines reap",
    "resume": "--resume",
}


def test_every_docs_page_is_linked_from_the_readme():
    readme = mlproject.README.read_text()
    missing = [page.name for page in PAGES[1:] if f"(docs/{page.name})" not in readme]
    assert not missing
