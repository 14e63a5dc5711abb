"""Lowering: schedule graph → Plan, one lowering per op kind (see mrc.lower.plan)."""
