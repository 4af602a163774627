def normalize_masked(ink: object, mask: object, out: object, height: int, width: int, /) -> bool:
    """normalize.normalize_ink(ink, mask) in C into `out` (28 x 28 bytes); False when the crop is too large."""
