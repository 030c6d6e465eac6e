"""Built-in noether callbacks, registered through entry points like any third-party plugin."""
