"""Module-wise training (seeds/module-wise-trgl.md): modules with auxiliary heads, transport
regularization (TRGL, VanGL) and the parallel, sequential and multi-lap regimes."""
