"""Delta Lake adapters: the raw event log and dead letters."""
