"""The ``shopguard`` command line: one module per command group, each exposing ``register(app)``."""
