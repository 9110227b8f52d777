"""What a sweep will run: its search space and every trial's fixed parameters, checked before
anything starts, and printed by --dry_run. No TensorFlow: a refusal and a dry run answer at once."""

import yaml

from pipelines.sweeps import search_space, storage


def checked_space(task, variant, settings, params, fixed_by_user):
    """(space, params): what the sweep tunes and every trial's fixed parameters, once its
    search space and storage are checked; a bad one raises InputError."""
    overrides = search_space.read_overrides(settings["search_space"]) if settings["search_space"] else None
    space, params = search_space.search_space(task, variant, params, overrides, fixed_by_user)
    storage.check(settings["storage"], settings["workers"])
    return space, params


def print_plan(task, variant, settings, space, params):
    """Print what the sweep would run, as YAML, without opening a study or a run."""
    from pipelines import tracking

    shown = {name: value for name, value in settings.items() if name not in ("dry_run", "storage")}
    print(
        yaml.safe_dump(
            {
                "entry_point": task.qualified_name(variant),
                "settings": {**shown, "storage": storage.describe(settings["storage"])},
                "fixed": {name: value for name, value in params.items() if name not in space},
                "search_space": search_space.as_file_entries(space),
            },
            sort_keys=False,
        ),
        end="",
    )
    tracking.mark_pending_run_dry()
    return 0
