"""The speed layer: a Faust worker from Kafka ``events`` to Redis speed tiles, the DLQ and ``raw_events``."""
