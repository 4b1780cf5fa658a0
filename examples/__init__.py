"""The shipped example (docs/design.md §2): its traffic generator; its definitions are ``feature_repo/``."""
