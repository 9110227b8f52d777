"""The tasks: every module here that defines `TASK` is one; adding a task means adding one module."""

import importlib
import pkgutil

from experiments.task import InputError, Param, RunFailed, Splits, Task, Variant


def _discover():
    tasks = {}
    for module in pkgutil.iter_modules(__path__):
        task = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
        if isinstance(task, Task):
            tasks[task.name] = task
    return tasks


TASKS: dict[str, Task] = _discover()


def resolve(name, variant=""):
    """(task, variant name) from `mnist` + `cnn_bn`, or from an entry-point name: `mnist_cnn_bn`."""
    if name in TASKS:
        task = TASKS[name]
        variant = variant or task.default_variant
        if variant not in task.variants:
            raise InputError(f"variant: unknown variant '{variant}' of task {name} (known: {', '.join(task.variants)})")
        return task, variant
    points = entry_points()
    if name not in points or variant:
        known = sorted(set(TASKS) | set(points))
        raise InputError(f"task: unknown task '{name}' (known: {', '.join(known)})")
    return points[name]


def entry_points():
    """Every (task, variant) by its entry-point name: xor, mnist_cnn, mnist_cnn_bn, ..."""
    return {task.qualified_name(variant): (task, variant) for task in TASKS.values() for variant in task.variants}


__all__ = ["TASKS", "InputError", "Param", "RunFailed", "Splits", "Task", "Variant", "entry_points", "resolve"]
