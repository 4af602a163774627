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

Off with DIGITREADER_ROTATE_PAGES=false, and without a splitter model (geometry alone).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from digitreader.errors import InputError
from digitreader.types import PageCut

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

Scorer = Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) crops -> (N,) log-probability of the likeliest digit


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


def upright_cut(scorer: Scorer, cut_turned: Callable[[int], PageCut]) -> PageCut:
    """The page cut the way up its digits read best: `cut_turned(rotation)` cuts it turned that many
    degrees clockwise (0 first; the others only where the page as it lies reads unsurely). With a
    template, a way up the template does not match (`template_mismatch`) reads as nothing; the error
    is raised when no other way up reads well either."""
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
    if as_it_lies.unsure == 0.0:
        return cuts[0]
    crops = samples.get(0, np.zeros((0, 28, 28), np.uint8))
    turned = read(scorer, half_turned(crops))
    upright = (
        as_it_lies.crops >= UPRIGHT_CROPS and as_it_lies.unsure <= FEW and turned.unsure >= as_it_lies.unsure + MARGIN
    )
    if not (turned.better_than(as_it_lies) or (as_it_lies.unsure > DOUBT and not upright)):
        return cuts[0]
    upside_down = weigh(180)
    if as_it_lies.unsure > DOUBT and upside_down.unsure > DOUBT:
        weigh(90)
        weigh(270)
    best = choose(readings)
    if best not in cuts:  # the template matches no way up that reads well
        raise mismatch[0]
    return cuts[best]
