"""Partitioned Langevin dynamics (seeds/multirate-training.md): a partition integrated by
underdamped Langevin dynamics (BAOAB splitting) with its own friction γ and temperature τ."""
