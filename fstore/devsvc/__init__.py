"""Local development services (Redis, broker, Spark and Redis clusters) for the demo, the tests and development."""
