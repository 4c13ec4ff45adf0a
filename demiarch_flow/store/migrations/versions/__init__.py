"""One module per revision, oldest first (see the package docstring)."""
