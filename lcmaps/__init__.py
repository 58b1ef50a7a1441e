"""LCMAPS in Python: map a grid credential to a local account.

Importing this package is cheap on purpose: glexec imports pieces of it on
every payload start. Submodules pull in what they need.
"""
