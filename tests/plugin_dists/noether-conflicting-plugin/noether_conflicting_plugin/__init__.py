"""A noether plugin distribution whose kind clashes with another distribution's."""
