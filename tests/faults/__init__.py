"""Fault suite (issue 10, item 6): kill and restart the worker, Kafka and Redis, and check exact counts."""
