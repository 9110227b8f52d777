"""The sampler and pruner a sweep names, seeded so that no worker or command repeats another's points."""

import optuna

SEED_STRIDE_PER_SESSION = 1000  # commands on one study, each with up to this many workers


def sampler_for(spec):
    # Workers, and sweep commands on other machines or resuming the study, must not sample the same points.
    seed = spec.params["seed"] + SEED_STRIDE_PER_SESSION * spec.session + spec.worker_index
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def pruner_for(spec):
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=spec.pruner_warmup_epochs
        )
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()
