"""Hyper-parameter search (seeds/training-essentials.md, "Hyperparameter Tuning") on optuna."""

from __future__ import annotations

from mrc.techniques.base import Technique

TECHNIQUE = Technique("sweep", check="mrc.techniques.sweep.check")
