"""The checker: AST → Program (see mrc.check.checker)."""
