"""fstore: a Lambda-architecture feature store.

`fstore.core` is the pure core (standard library, numpy/pyarrow at most): feature definitions, window and
tile arithmetic, partial aggregates, event validation and de-duplication. Everything else in this package
is an adapter (Delta, Kafka, Redis, Feast, CLI) that calls the core.
"""

__version__ = "0.1.0"
