"""Plain data passed between pipeline stages: small frozen dataclasses and numpy arrays, picklable.

Coordinates: a `BBox` is (x, y, w, h) in integer pixels. Boxes that leave the library (database,
export) are always in the coordinates of the page *as submitted* (after EXIF orientation, before
deskew); `PreparedPage.to_original` maps points back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

BBox = tuple[int, int, int, int]
FieldKind = Literal["boxes", "string"]

#: Label index the model uses for "not a digit" (labels 0-9 are the digits).
NON_DIGIT = 10
LABELS: tuple[str, ...] = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "non-digit")


@dataclass(frozen=True)
class PageImage:
    """One decoded page: greyscale uint8, dark ink on light paper, as submitted."""

    number: int  # from 1
    gray: np.ndarray  # (H, W) uint8; reduced `reduction` times when the loader was allowed to
    dpi: float | None = None  # of the page as submitted
    source: str = ""  # file path, for error messages
    reduction: int = 1  # `gray` is the page as submitted reduced by this integer factor
    full_size: tuple[int, int] | None = None  # (width, height) as submitted, when reduced or resampled
    #: Rows of the page as submitted per row of `gray` (after `reduction`): not 1 where the file's
    #: pixels are not square (a fax at 204 x 98 dpi) and `gray` was resampled to square pixels.
    y_scale: float = 1.0

    @property
    def width(self) -> int:
        """Width of the page as submitted (not of a reduced `gray`)."""
        return int(self.full_size[0]) if self.full_size else int(self.gray.shape[1])

    @property
    def height(self) -> int:
        return int(self.full_size[1]) if self.full_size else int(self.gray.shape[0])


@dataclass(frozen=True)
class PreparedPage:
    """A page after deskew, illumination correction and binarization."""

    number: int
    gray: np.ndarray  # (H', W') uint8 deskewed, illumination-corrected; ink dark
    ink: np.ndarray  # (H', W') uint8 binary, ink = 255
    to_original: np.ndarray  # (2, 3) float64 affine: prepared (x, y, 1) -> original (x, y)
    width: int  # of the original page
    height: int
    skew_degrees: float = 0.0
    dpi: float | None = None
    levels: tuple[float, float] | None = None  # (strong, weak) ink grey levels of `gray` (prepare.ink_levels)
    # The page as it was before its deskew (illumination-corrected, like `gray`), and the (2, 3) affine
    # from its pixels to `gray`'s: a sheet turned its own way is straightened from it (`sheets.py`).
    unskewed: np.ndarray | None = None
    deskew: np.ndarray | None = None


@dataclass(frozen=True)
class FieldRegion:
    """A field found on a prepared page, before its digits are cut (prepared coordinates)."""

    kind: FieldKind
    bbox: BBox  # outer box in prepared-page coordinates
    cells: tuple[BBox, ...] = ()  # for "boxes": each cell's inner box (prepared coordinates)
    name: str | None = None  # from a template, else named by position later
    length: int | None = None  # template rule: expected number of digits
    pattern: str | None = None  # template rule: regex the value must match


@dataclass(frozen=True)
class DigitSlot:
    """One digit position: a cell of a box field, or one digit cut from a string field."""

    position: int  # from 0, left to right within the field
    bbox: BBox  # page-as-submitted coordinates
    crop: np.ndarray  # (28, 28) uint8, MNIST form (ink high); zeros for a blank
    blank: bool


@dataclass(frozen=True)
class FieldCut:
    name: str
    kind: FieldKind
    bbox: BBox  # page-as-submitted coordinates
    slots: tuple[DigitSlot, ...]
    length: int | None = None
    pattern: str | None = None


@dataclass(frozen=True)
class PageCut:
    """Everything segmentation produces for one page: `segment_page`'s result."""

    number: int
    width: int  # page as submitted
    height: int
    fields: tuple[FieldCut, ...]
    skew_degrees: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    #: Degrees clockwise the page as submitted was turned to be read (0, 90, 180, 270): a page scanned
    #: upside down or sideways (`orient.py`). Boxes stay in the coordinates of the page as submitted.
    rotation: int = 0
    #: No ink at all: a blank sheet inside a multi-page document (the back of a form scanned duplex, a
    #: separator sheet), kept as a page with no field. A document of blank pages only fails (`blank_page`).
    blank: bool = False

    def crops(self) -> np.ndarray:
        """All non-blank crops of the page in field/position order, (N, 28, 28) uint8."""
        arr = [s.crop for f in self.fields for s in f.slots if not s.blank]
        if not arr:
            return np.zeros((0, 28, 28), np.uint8)
        return np.stack(arr)
