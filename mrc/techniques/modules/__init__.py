"""Module-wise training (TRGL): cutting the traced model into modules, and their auxiliary heads."""
