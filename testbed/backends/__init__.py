"""Where PostgreSQL runs: local processes (the embedded default) or Docker containers."""
