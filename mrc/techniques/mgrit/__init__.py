"""Layer-parallel training by multigrid-in-time (seeds/layer-parallel-mgrit.md): the generic MGRIT solver."""
