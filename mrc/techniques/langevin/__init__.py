"""Partitioned Langevin dynamics (seeds/multirate-training.md): a partition integrated by
underdamped Langevin dynamics (BAOAB splitting) with its own friction γ and temperature τ."""

from __future__ import annotations

from mrc.techniques.base import Technique

TECHNIQUE = Technique("langevin", check="mrc.techniques.langevin.check")
