"""The point-in-time engine's adapters: local (Arrow) and Spark."""
