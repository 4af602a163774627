"""Orient stage: a page scanned upside down or sideways is read turned upright.

Rows of boxes look alike either way up; the digits in them do not. A page is first cut as it lies
(`segment.segment_page`), and the splitter's digit model (already loaded for string fields) reads a
sample of its crops. What counts is the share of them it reads unsurely (under `SURE`): on a page
lying upright that is almost always none, and nothing more is done (one small batch a page). Upside
down, a fifth to a third of the digits read unsurely (2, 3, 4, 5 and 7 are no digits turned; 0, 1, 8
read alike, 6 and 9 swap); on its side, the rows of boxes are columns, hardly any field is found, and
what is cut reads as nothing.

So when some crops read unsurely, the same crops are read turned half a turn (a crop in MNIST form
turned is the crop of the digit turned: its ink box and centre of mass turn with it). Where they read
better that way, or where too many read unsurely (`DOUBT`) and turned they do not read clearly worse
(`FEW`), the page is cut again upside down; where that reads badly too, it is cut again turned a
quarter turn each way. The way up whose crops read best is taken only if few of them read unsurely
(`GOOD`) and it beats the page as it lies by `MARGIN`: a page of poor handwriting is read as it lies,
and so is one whose digits read alike both ways (a cheque of 0s, 1s and 8s).
Boxes still come out in the coordinates of the page as submitted (`prepare_page(rotation=...)` puts
the turn into its `to_original`); `PageCut.rotation` says how the page was turned. With a template, a
way up it does not match reads as nothing (a form upside down does not match its template; upright it
does).

Where the digits cannot tell (a cheque of a dozen digits, many of them 0, 1, 8, 6, 9, read about as
surely either way up), the page's printed words can (`print_reading`): in a line of Latin text more
ink rises above the small letters (capitals, b d f h k l t, the dots of i and j) than falls below them
(g j p q y), and upside down it is the other way round. A page whose printed lines say it is upside
down is cut again upside down, and read so where its digits read well that way (`GOOD`). The words are
looked at only where the digits leave a doubt: some crops read unsurely, or few crops (a cheque).

Off with DIGITREADER_ROTATE_PAGES=false, and without a splitter model (geometry alone).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from digitreader.errors import InputError
from digitreader.types import FieldRegion, PageCut, PreparedPage

#: Crops read to judge a page, spread evenly over it.
SAMPLE = 24
#: Fewer crops than this say nothing about which way up a page is: such a way up reads as unsure.
MIN_CROPS = 4
#: A crop read with a lower probability of its likeliest digit is unsure.
SURE = math.log(0.9)
#: With more than this share of its crops unsure, a page lying as it is may be upside down or on its
#: side: the other ways up are cut (upright generated pages: none unsure on half of them, at most 3 of
#: 24; the same pages upside down: 19 to 31 %).
DOUBT = 0.1
#: A page with at least UPRIGHT_CROPS crops and at most FEW of them unsure, whose crops read clearly
#: worse turned half a turn (MARGIN more of them unsure), lies upright with a few poor digits: not cut
#: again (a cheque's one or two unsure digits of nine). A form on its side has few fields found, and
#: few crops (4 to 6 where a third or less of them read unsurely; or many, most of them unsure).
FEW = 0.34
UPRIGHT_CROPS = 8
#: Another way up is taken when at most this share of its crops is unsure...
GOOD = 0.1
#: ... and this much less than of the page as it lies, or less and read this much more surely on
#: average (log-probability; a cheque has a dozen digits, and one unsure crop is a twelfth of them).
MARGIN = 0.1
MEAN_MARGIN = 0.05

#: The printed lines' verdict (`print_reading`, from -1 upside down to 1 upright) that says a page is
#: upside down (generated pages, 180 each way: upright 0.15 to 1.0; upside down -1.0 to -0.14, and two
#: forms at -0.08 and -0.04, which the digits decide).
PRINT_SAYS = 0.1
#: Printed lines fewer than this, or less ink above and below their small letters than PRINT_INK of
#: the (half-scale) page's height squared, say nothing (generated pages: 0.0001 to 0.004, median 0.0009).
PRINT_LINES = 2
PRINT_INK = 0.00005

Scorer = Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) crops -> (N,) log-probability of the likeliest digit
PrintCue = Callable[[], float | None]  # the page as it lies: `print_reading`, None where nothing is printed


@dataclass(frozen=True)
class Reading:
    """How surely a sample of crops reads: the share unsure (1.0 for too few crops), and the mean
    log-probability (to break ties)."""

    unsure: float
    mean: float
    crops: int

    def better_than(self, other: Reading) -> bool:
        return (self.unsure, -self.mean) < (other.unsure, -other.mean)

    def beats(self, as_it_lies: Reading) -> bool:
        """Whether this way up reads well, and clearly better than the page as it lies."""
        if self.unsure > GOOD or self.unsure >= as_it_lies.unsure:
            return False
        return self.unsure + MARGIN <= as_it_lies.unsure or self.mean >= as_it_lies.mean + MEAN_MARGIN


#: A way up with nothing to read (no crops, or a template it does not match).
NOTHING = Reading(1.0, -math.inf, 0)


def sample(cut: PageCut, n: int = SAMPLE) -> np.ndarray:
    """Up to `n` of the page's non-blank crops, spread evenly over its fields."""
    crops = cut.crops()
    if len(crops) > n:
        crops = crops[np.unique(np.linspace(0, len(crops) - 1, n).round().astype(int))]
    return crops


def half_turned(crops: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(crops[:, ::-1, ::-1])


def read(scorer: Scorer, crops: np.ndarray) -> Reading:
    if len(crops) < MIN_CROPS:
        return dataclasses.replace(NOTHING, crops=len(crops))
    logp = np.asarray(scorer(crops), np.float64)
    return Reading(float(np.mean(logp < SURE)), float(logp.mean()), len(crops))


def choose(readings: dict[int, Reading]) -> int:
    """The way up (degrees clockwise) whose reading is best, when it `beats` the page as it lies
    (`readings[0]`); else 0."""
    best = 0
    for rotation, r in readings.items():
        if rotation and r.beats(readings[0]) and (best == 0 or r.better_than(readings[best])):
            best = rotation
    return best


def print_reading(prepared: PreparedPage, regions: Sequence[FieldRegion]) -> float | None:
    """Which way up the page's printed lines say it lies: (ink above their small letters - ink below)
    / (both), from 1 (upright) to -1 (upside down); None where too little is printed to tell.

    The page's ink at half the prepared scale, the fields (boxes and handwriting) blanked out;
    components the size of printed letters, joined along their lines; in each line of letters that
    are not all capitals or figures, the rows where ink is dense are the small letters' band, and ink
    above it and below it is counted."""
    ink = prepared.ink[::2, ::2].copy()
    height = ink.shape[0]
    if height < 64:
        return None
    dpi = (prepared.dpi or 150.0) / 2  # of the half-scale ink (`prepared.dpi` is the prepared page's)
    margin = max(1, int(0.03 * dpi))
    for r in regions:
        x, y, w, h = (v // 2 for v in r.bbox)
        ink[max(0, y - margin) : y + h + margin + 1, max(0, x - margin) : x + w + margin + 1] = 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    tallest = 0.3 * dpi  # a printed letter: up to about 7 mm tall and 11 mm wide
    hs, ws = stats[:, cv2.CC_STAT_HEIGHT], stats[:, cv2.CC_STAT_WIDTH]
    letter = (hs <= tallest) & (ws <= 1.5 * tallest)
    letter[0] = False
    letters = (letter * np.uint8(255))[labels]
    gap = max(3, int(0.06 * dpi))  # letters and words of a line join; lines do not
    n, _, lines, _ = cv2.connectedComponentsWithStats(cv2.dilate(letters, np.ones((1, gap), np.uint8)))
    above = below = 0.0
    counted = 0
    for x, y, w, h, _area in lines[1:]:
        if w < 3 * h or h < 0.04 * dpi:  # not a line of text: a mark, a rule, a lone letter
            continue
        profile = np.count_nonzero(letters[y : y + h, x : x + w], axis=1)
        band = np.flatnonzero(profile >= 0.4 * profile.max())
        top, bottom = int(band[0]), int(band[-1])
        if bottom - top + 1 > 0.8 * h:  # capitals or figures only: nothing rises or falls
            continue
        above += float(profile[:top].sum())
        below += float(profile[bottom + 1 :].sum())
        counted += 1
    if counted < PRINT_LINES or above + below < PRINT_INK * height * height:
        return None
    return (above - below) / (above + below)


def upright_cut(scorer: Scorer, cut_turned: Callable[[int], PageCut], printed: PrintCue | None = None) -> PageCut:
    """The page cut the way up its digits read best: `cut_turned(rotation)` cuts it turned that many
    degrees clockwise (0 first; the others only where the page as it lies reads unsurely). With a
    template, a way up the template does not match (`template_mismatch`) reads as nothing; the error
    is raised when no other way up reads well either.

    `printed` (after `cut_turned(0)`): `print_reading` of the page as it lies, asked where its digits
    leave a doubt; a page it says is upside down is read so where its digits read well that way."""
    cuts: dict[int, PageCut] = {}
    samples: dict[int, np.ndarray] = {}
    readings: dict[int, Reading] = {}
    mismatch: list[InputError] = []

    def weigh(rotation: int) -> Reading:
        try:
            cuts[rotation] = cut_turned(rotation)
        except InputError as exc:  # the page as it lies fails as it always did; another way up reads as nothing
            if rotation == 0 and exc.code != "template_mismatch":
                raise
            if exc.code == "template_mismatch":
                mismatch.append(exc)
            readings[rotation] = NOTHING
        else:
            samples[rotation] = sample(cuts[rotation])
            readings[rotation] = read(scorer, samples[rotation])
        return readings[rotation]

    as_it_lies = weigh(0)
    doubt = as_it_lies.unsure > 0.0 or as_it_lies.crops < SAMPLE  # few crops: a cheque's digits may read alike
    says = printed() if printed is not None and doubt else None
    if says is not None and says <= -PRINT_SAYS:
        upside_down = weigh(180)
        if 180 in cuts and upside_down.unsure <= GOOD:  # not against digits that read badly that way too
            return cuts[180]
    if as_it_lies.unsure == 0.0:
        return cuts[0]
    crops = samples.get(0, np.zeros((0, 28, 28), np.uint8))
    turned = read(scorer, half_turned(crops))
    upright = (
        as_it_lies.crops >= UPRIGHT_CROPS and as_it_lies.unsure <= FEW and turned.unsure >= as_it_lies.unsure + MARGIN
    )
    if not (turned.better_than(as_it_lies) or (as_it_lies.unsure > DOUBT and not upright)):
        return cuts[0]
    upside_down = readings[180] if 180 in readings else weigh(180)
    if as_it_lies.unsure > DOUBT and upside_down.unsure > DOUBT:
        weigh(90)
        weigh(270)
    best = choose(readings)
    if best not in cuts:  # the template matches no way up that reads well
        raise mismatch[0]
    return cuts[best]
