"""Kafka adapters: clients, topics and message files."""
