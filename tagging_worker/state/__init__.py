"""The state wing (see the package docstring)."""
