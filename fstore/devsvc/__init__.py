"""Local development services (Redis, broker) and the demo."""
