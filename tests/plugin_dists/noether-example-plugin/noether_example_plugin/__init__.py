"""Example noether plugins: ``ExampleCounter`` (a class) and ``example_heartbeat`` (a module)."""
