"""Module-wise training (seeds/module-wise-trgl.md): modules with auxiliary heads, transport regularization and regimes."""
