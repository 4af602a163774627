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


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators, as `shown` writes
#: them: `\n`, `\r`, `\t`, else `\xNN` / `\uNNNN`.
_CONTROLS = {
    c: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(chr(c), f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
    for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def shown(text: str) -> str:
    """`text` as the command line shows it in a line of its own (`submit`'s "failed PATH: ..." lines,
    `status`): `printable`, and each control character escaped as well, so that a file name holding a
    newline (or a carriage return, a tab, an escape sequence) stays on its line and cannot forge one:
    "scan\\nfailed.png" is shown as `scan\\nfailed.png`. What is stored keeps them (`printable` only)."""
    return printable(text).translate(_CONTROLS)
