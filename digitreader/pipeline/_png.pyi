from collections.abc import Buffer

def unfilter(buf: Buffer, height: int, stride: int, bpp: int, /) -> None:
    """Undo PNG row filters in place and pack the rows (see _png.c)."""
