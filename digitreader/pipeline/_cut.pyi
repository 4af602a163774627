def remove_lines(
    ink: object,
    out: object,
    height: int,
    width: int,
    x0: int,
    y0: int,
    x1: int,
    y1: int,
    max_t: int,
    level: float,
    ticks: bool,
    pen: int,
    /,
) -> None:
    """cut._remove_lines_py in C: writes the window's ink without its box lines into `out` (see _cut.c)."""

def cell_mask(
    ink: object,
    gray: object,
    out: object,
    height: int,
    width: int,
    weak: float,
    x0: int,
    y0: int,
    x1: int,
    y1: int,
    cell_w: int,
    cell_h: int,
    max_t: int,
    pen: int,
    /,
) -> bool:
    """cut._cell_mask in C: writes the cell's digit mask (0/1) into `out`; returns whether it is blank."""
