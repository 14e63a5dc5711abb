"""Hyper-parameter search (seeds/training-essentials.md, "Hyperparameter Tuning") on optuna."""
