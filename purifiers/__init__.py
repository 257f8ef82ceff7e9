"""benchbench's built-in purifier plugins, one module per family, each declared as an entry point in
pyproject.toml (group ``benchbench.purifiers``) exactly like a third-party plugin."""
