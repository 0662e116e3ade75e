"""The ops wing (see the package docstring)."""
