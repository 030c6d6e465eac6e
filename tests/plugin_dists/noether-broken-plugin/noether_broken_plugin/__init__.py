"""A noether plugin distribution whose plugin module fails to import."""
