"""Redis adapters: the key layout and the RESP wire helpers."""
