"""Synthetic traffic for demos, tests and benchmarks (not a rule of the store)."""
