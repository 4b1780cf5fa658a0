"""Nightly batch layer: tiles and feature snapshots in Delta, a data-quality gate, the Redis batch view.

See docs/design.md §4, §7 and docs/batch.md.
"""
