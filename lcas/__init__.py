"""LCAS in Python: a chain of allow/ban plugins that must all agree."""
