"""Optuna sweeps over the one training pipeline.

    python -m pipelines sweep --task mnist_cnn --n_trials 30 --workers 2

The study is an MLflow parent run (`study_run`). Every trial is a nested run trained by
`pipelines.train.train`, with optuna-integration's Keras pruning callback reporting the
validation metric after each epoch (`callbacks`). Workers (`worker`) are processes
sharing the study's storage (`storage`), started by the command's coordinator
(`coordinator`). Re-running the same command resumes the study, which stops at exactly
n_trials finished (complete plus pruned) trials.
"""
