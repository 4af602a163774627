def line_image(mask: object, out: object, height: int, width: int, bridge: int, len_h: int, len_v: int, /) -> None:
    """fields._line_image_cv in C, for a 0/255 mask: writes the line image into `out` (see _fields.c)."""
