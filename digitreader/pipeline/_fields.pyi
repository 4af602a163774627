def line_image(mask: object, out: object, height: int, width: int, bridge: int, len_h: int, len_v: int, /) -> None:
    """fields._line_image_cv in C, for a 0/255 mask: writes the line image into `out` (see _fields.c)."""

def frame(
    piece: object, height: int, width: int, x0: int, y0: int, mm: tuple[int, int, int, int, int, int], /
) -> tuple[str, tuple[int, int, int, int], list[tuple[int, int, int, int]]] | None:
    """fields._frame_py in C: (kind, bbox, cells) of a frame in a 0/1 piece, or None (see _fields.c)."""

def ticks(
    piece: object, height: int, width: int, x0: int, y0: int, mm: tuple[int, int, int, int, int, int], /
) -> tuple[str, tuple[int, int, int, int], list[tuple[int, int, int, int]]] | None:
    """fields._ticks_py in C: (kind, bbox, cells) of a tick row in a 0/1 piece, or None (see _fields.c)."""
