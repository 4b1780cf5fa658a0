"""Feast adapters: objects for `feast apply`, the online store and the offline store."""
