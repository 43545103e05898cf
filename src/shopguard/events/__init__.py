"""Behaviour events: the schema every source is mapped to, ingestion, and the shop simulator."""
