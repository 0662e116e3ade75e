"""The cli wing (see the package docstring)."""
