"""The one sanitiser for text that reaches a log line, an audit record or a reply.

Every package may import this module; it imports nothing of ours. Values from a
credential, a request or a file can hold newlines and terminal escapes; written raw, they
could forge a second log line. ``one_line`` makes them a single printable line.
"""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` as one printable line: each control character becomes ``?``.

    With ``limit``, the result is cut to at most ``limit`` characters, ending in ``...``.
    Printable text (the common case) is returned without a per-character loop.
    """
    s = text if isinstance(text, str) else str(text)
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() else "?" for ch in s)
    if limit is not None and len(s) > limit:
        s = s[: max(limit - 3, 0)] + "..."
    return s
