"""bc-testbed: a chaos testbed for two-site business-continuity reporting pipelines."""

__version__ = "0.1.0"
