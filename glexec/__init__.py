"""glexec: run a payload under its owner's account, via a small setuid helper.

In:  the payload's proxy and command, from a pilot job. Out: the payload's exit status, or
     the classic exit codes 201-204. Imports: :mod:`client` and :mod:`safetext` only, so a
     payload start stays fast. (The front end and helper are still to be written.)
"""
