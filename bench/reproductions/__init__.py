"""The seeds' headline experiments, one module each, run by `bench/repro.py` (see harness.py)."""

EXPERIMENTS = ("patch", "transfer", "subsets", "brains", "modulewise", "mgrit", "lr_batch")
"""Every experiment, in the order `--all` runs them; each names a module of this package."""
