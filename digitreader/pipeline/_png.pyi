def unfilter(buf: bytearray | memoryview, height: int, stride: int, bpp: int, /) -> None:
    """Undo PNG row filters in place and pack the rows (see _png.c)."""
