"""The produce wing (see the package docstring)."""
