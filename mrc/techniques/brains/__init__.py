"""Multirate across networks ("brains"): copies of one network, each on its own time-scale, merged
by a merge rule (mean, weighted, best, ema) whenever two or more reach the same time."""
