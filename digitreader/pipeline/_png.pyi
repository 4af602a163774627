def unfilter(buf: bytearray | memoryview, height: int, stride: int, bpp: int, lanes: bool = True, /) -> None:
    """Undo PNG row filters in place and pack the rows (see _png.c); lanes=False: without SSE2 code."""
