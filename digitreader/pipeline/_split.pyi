def stroke_width(mask: object, width: int, x0: int, y0: int, x1: int, y1: int, /) -> float:
    """split._stroke_width_py of the box [x0, x1) x [y0, y1) of a uint8 0/1 mask in C (see _split.c)."""
