"""IR version 2: typed, scoped ops, value edges, step patterns and stages (see mrc.ir.graph)."""
