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
