"""The alibaba wing (see the package docstring)."""
