"""Checks shared by the loaders, so a bad file gets one line that names it."""

from pathlib import Path

import lazy_loader as lazy
import numpy as np

from experiments.task import InputError, shown

pd = lazy.load("pandas")  # imported when a CSV is read

PROJECT_DATA = Path(__file__).resolve().parents[1] / "data"


def existing_path(path, what, help_text="", file=False):
    """`path` if it exists (and, given `file`, is a file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{what} not found at {path}" + (f": {help_text}" if help_text else ""))
    if file and path.is_dir():
        raise InputError(f"{what}: {path} is a folder, not a file" + (f": {help_text}" if help_text else ""))
    return path


def read_csv(source, required_columns, name=None):
    """Read a CSV (a path or a file object called `name`), refusing a file that is not
    one or lacks a column the task needs."""
    name = name or source
    try:
        frame = pd.read_csv(source)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{name} is not a readable CSV file ({error})") from None
    missing = [column for column in required_columns if column not in frame.columns]
    if missing:
        raise InputError(f"{name} lacks required column(s): {', '.join(missing)}")
    return frame


def numeric_columns(frame, columns, path):
    """The columns as float32, refusing non-numeric, infinite or empty cells by column name."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        _refuse_first(frame, column, path, ~np.isfinite(values.to_numpy("float64")), "a non-numeric or infinite")
        frame[column] = values
    return frame


def text_columns(frame, columns, path):
    """Refuse empty cells in the columns (categories such as Geography)."""
    for column in columns:
        _refuse_first(frame, column, path)
    return frame


def _refuse_first(frame, column, path, bad=None, what=""):
    """Refuse the first empty cell of `column`, else the first `bad` one: `what` value."""
    missing = frame[column].isna().to_numpy()
    if missing.any():
        raise InputError(f"{path}: column {column} has a missing value at data row {int(missing.argmax()) + 1}")
    if bad is not None and bad.any():
        row = int(bad.argmax())
        found = shown(frame[column].iloc[row])
        raise InputError(f"{path}: column {column} has {what} value ('{found}') at data row {row + 1}")
