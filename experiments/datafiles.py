"""Checks shared by the loaders, so a bad file gets one line that names it."""

from pathlib import Path

import lazy_loader as lazy

from experiments.task import InputError

pd = lazy.load("pandas")  # imported when a CSV is read

PROJECT_DATA = Path(__file__).resolve().parents[1] / "data"


def existing_path(path, what, help_text=""):
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{what} not found at {path}" + (f": {help_text}" if help_text else ""))
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
    """The columns as float32, refusing non-numeric or empty cells by column name."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(values.isna().to_numpy().argmax())
            raise InputError(
                f"{path}: column {column} has a missing or non-numeric value "
                f"({frame[column].iloc[row]!r}) at data row {row + 1}"
            )
        frame[column] = values
    return frame
