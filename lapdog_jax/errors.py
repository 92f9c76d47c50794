"""Error text shared by the modules that report someone else's exception in their own."""

from __future__ import annotations


def one_line(error: BaseException, limit: int | None = None) -> str:
    """`Type: message` of an exception on one line (whitespace runs and newlines become one
    space), its message cut to `limit` characters when given."""
    text = " ".join(str(error).split())
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(error).__name__}: {text}"
