"""The worker wing (see the package docstring)."""
