"""Text as digitreader stores and shows it (no dependencies: the CLI's light paths import it)."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` (a path, or a message naming one) as digitreader stores and shows it. On Linux a file name is
    bytes, and one that is not valid UTF-8 (names from an old Windows share or a zip archive) reaches
    Python with surrogates that neither SQLite nor PostgreSQL accept: each such byte is written as
    `\\xNN`, so "scan-\\xff.png" is stored and shown, by `submit`'s lines as by `status` and the export.
    Valid text, and text made printable already, is returned unchanged."""
    try:  # valid text goes through unchanged
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
