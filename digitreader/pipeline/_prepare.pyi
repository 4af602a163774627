def profile_scores(xc: object, yc: object, cos: object, sin: object, n_bins: int, out: object, /) -> None:
    """prepare._profile_scores_np in C: each angle's score (float64) into `out` (see _prepare.c)."""
