"""Deployable jobs: the stream worker and the nightly batch layer."""
