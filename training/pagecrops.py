"""Training crops cut by our own segmentation from generated pages built of MNIST *training* digits.

The model reads MNIST digits well but is less sure of the crops segmentation actually makes, and
the string splitter (`digitreader.pipeline.split.refine_string`) is misled when the model reads a
touching pair squeezed into one crop, or a loose fragment of a digit, as a confident digit. This
module makes training data of real pipeline crops:

1. pages are rendered by `digitreader.synth.generate.render_page` (forms and cheques, "scan" and
   some "rough" style) from `MnistTrainDigits`: MNIST *training* images outside the validation
   split, so neither validation nor test digits ever appear on them;
2. each page is written as PNG or JPEG, loaded back with `load_pages` and segmented with
   `segment_page`, as `digitreader submit` does, so file artefacts and every segmentation
   mistake are real;
3. each non-blank slot is labelled against the page's ground truth by the matching rule of
   `digitreader.synth.score` (the centre of one box inside the other): one slot on one true digit
   -> its label; a slot holding two or more true digits (a touching pair cut as one) -> 10; two or
   more slots on one true digit (a digit cut in pieces) -> 10 each; a slot on no true digit (a
   speck, a separator, a stroke of a box line) or on a true blank cell -> 10;
4. *synthetic* negatives from the same pages' string fields, made from the pieces `refine_string`
   starts from and cut the way it cuts its candidates: the union of two neighbouring digits' pieces
   (a merge candidate that should lose) and the lighter half of a wide digit cut at its middle
   column (the part of a split candidate that should lose), both -> 10.

The result is cached as a compressed `.npz` keyed by the pages, the seed and `VERSION`
(default folder `$DIGITREADER_HOME/cache/pagecrops`). It also records a digest of the segmentation
code and model it was cut with; a cache made with other ones is still used, with a warning (delete
the file to cut the crops again).

    python -m training.pagecrops --pages 400 --seed 1      # fill the cache, print counts and time
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitreader import pipeline
from digitreader.errors import InputError
from digitreader.pipeline.cut import string_pieces
from digitreader.pipeline.fields import find_fields
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.prepare import map_box, prepare_page
from digitreader.pipeline.recognize import read_manifest
from digitreader.pipeline.segment import segment_page
from digitreader.pipeline.split import Piece, cut_at, merge_pieces, piece_crop
from digitreader.settings import Settings, get_settings
from digitreader.synth.generate import STYLES, render_page, write_pages
from digitreader.synth.score import Box, centre_in, matches
from digitreader.types import FieldRegion, PageCut, PreparedPage
from training.data import load_mnist, train_val_split
from training.run import SPLIT_SEED, VAL_SIZE

log = logging.getLogger(__name__)

#: Bump when rendering, labelling or the negatives change: cached crops of another version are not reused.
VERSION = "2"
#: Kinds of the labelled pipeline crops (`PageCrops.kinds`).
KINDS = ("digit", "pair", "piece", "extra", "blank")
DIGIT, PAIR, PIECE, EXTRA, BLANK = range(len(KINDS))
#: Kinds of the synthetic negatives (`PageCrops.negative_kinds`).
NEGATIVE_KINDS = ("union", "half", "touch")
UNION, HALF, TOUCH = range(len(NEGATIVE_KINDS))
#: A slot covering at least this share of its true digit's box (both ways) is the whole digit even when
#: some other slot also falls on that digit; it is left out rather than called a piece.
WHOLE = 0.9
#: A half of a digit narrower than this (width / height) normalizes to a plain upright stroke, i.e. a
#: "1"; it is left out of the negatives (the same reason `nondigits.py` draws no upright strokes).
MIN_HALF_ASPECT = 0.3
#: Digits whose halves are never negatives: a half of a 1 or a 7 is still a 1 or a 7-like stroke.
NO_HALVES = (1, 7)
#: Fractions of the pages written as JPEG (else PNG) and drawn in the "rough" style (else "scan").
JPEG_SHARE = 0.5
ROUGH_SHARE = 0.2
#: Share of the pages that are cheques (the rest A4 forms), as `generate(kind="mixed")`.
CHEQUE_SHARE = 0.3

#: Modules of `digitreader.pipeline` whose code decides the crops (their digest is kept with the cache).
SEGMENTATION_MODULES = ("load", "prepare", "fields", "cut", "normalize", "segment")

ProgressFn = Callable[[int, int], None]  # (pages done, pages in all)


# ----------------------------------------------------------------------------------------------
# digit source


class MnistTrainDigits:
    """Digit source (`DigitSource`) drawing only MNIST *training* images outside the validation split.

    `drawn` lists the index (into the 60k training split) of every image returned, in order.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, allowed: np.ndarray) -> None:
        self.images = images
        allowed = np.asarray(allowed, np.int64)
        self.by_label = [allowed[labels[allowed] == d] for d in range(10)]
        self.drawn: list[int] = []

    @classmethod
    def load(cls, data_dir: Path | str | None) -> MnistTrainDigits:
        full = load_mnist("train", data_dir)
        assert full.labels is not None
        return cls(full.images, full.labels, training_indices(len(full)))

    def __call__(self, label: int, rng: np.random.Generator) -> np.ndarray:
        idx = self.by_label[label]
        i = int(idx[rng.integers(len(idx))])
        self.drawn.append(i)
        return self.images[i]


def training_indices(n: int) -> np.ndarray:
    """Indices of the MNIST training images that training uses: all but the fixed validation split."""
    train, _ = train_val_split(n, VAL_SIZE, SPLIT_SEED)
    return train


# ----------------------------------------------------------------------------------------------
# result and cache


@dataclass(frozen=True)
class PageCrops:
    """Crops cut from generated pages. `crops`/`labels` are pipeline slots; `negatives` are all class 10."""

    crops: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64: 0-9, or 10
    kinds: np.ndarray  # (N,) int8 index into KINDS
    negatives: np.ndarray  # (M, 28, 28) uint8, synthetic, label 10
    negative_kinds: np.ndarray  # (M,) int8 index into NEGATIVE_KINDS
    mnist_indices: np.ndarray  # sorted unique indices (MNIST training split) of the digits on the pages
    counts: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # CPU time the generation took (kept in the cache)
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.crops.shape[0])


def default_cache_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).home / "cache" / "pagecrops"


def _params(n_pages: int, seed: int, dpi: float) -> dict[str, Any]:
    return {"version": VERSION, "pages": n_pages, "seed": seed, "dpi": dpi, "jpeg": JPEG_SHARE,
            "rough": ROUGH_SHARE, "cheques": CHEQUE_SHARE}  # fmt: skip


def segmentation_digest() -> str:
    """SHA-256 (16 hex digits) of the segmentation modules' source and the shipped model's checksum."""
    folder = Path(pipeline.__file__).parent
    h = hashlib.sha256()
    for name in SEGMENTATION_MODULES:
        h.update((folder / f"{name}.py").read_bytes())
    h.update(str(read_manifest().get("sha256", "")).encode())
    return h.hexdigest()[:16]


def cache_path(cache_dir: Path, params: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"pagecrops-v{params['version']}-p{params['pages']}-s{params['seed']}-{digest}.npz"


def _save(path: Path, pc: PageCrops) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"counts": pc.counts, "params": pc.params, "seconds": pc.seconds, "segmentation": segmentation_digest()}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, crops=pc.crops, labels=pc.labels, kinds=pc.kinds, negatives=pc.negatives,
                            negative_kinds=pc.negative_kinds, mnist_indices=pc.mnist_indices,
                            meta=np.array(json.dumps(meta)))  # fmt: skip
    tmp.replace(path)


def _load(path: Path, params: dict[str, Any]) -> PageCrops | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["params"] != params:
                return None
            if meta.get("segmentation") != segmentation_digest():
                log.warning("%s was cut by other segmentation code or model than the current one; delete it to "
                            "cut the crops again", path)  # fmt: skip
            return PageCrops(z["crops"], z["labels"], z["kinds"], z["negatives"], z["negative_kinds"],
                             z["mnist_indices"], meta["counts"], meta["params"], meta["seconds"], True)  # fmt: skip
    except (OSError, ValueError, KeyError) as exc:  # a damaged cache file is regenerated
        log.warning("ignoring the page-crop cache %s (%s)", path, exc)
        return None


def page_crops(
    n_pages: int,
    seed: int,
    data_dir: Path | str | None = None,
    *,
    cache_dir: Path | str | None = None,
    settings: Settings | None = None,
    dpi: float = 300,
    on_page: ProgressFn | None = None,
) -> PageCrops:
    """Crops cut by segmentation from `n_pages` generated pages (seeded), from the cache when there.

    `cache_dir`: default `$DIGITREADER_HOME/cache/pagecrops`. `on_page(done, total)` is called after
    each page segmented (never when the result comes from the cache).
    """
    settings = settings or get_settings()
    params = _params(n_pages, seed, dpi)
    path = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(settings), params)
    if path.exists():
        cached = _load(path, params)
        if cached is not None:
            log.info("page crops from the cache %s: %s", path, cached.counts)
            return cached
    pc = generate_page_crops(n_pages, seed, data_dir, settings=settings, dpi=dpi, on_page=on_page)
    _save(path, pc)
    log.info("page crops cached in %s: %s (%.0f s CPU)", path, pc.counts, pc.seconds)
    return pc


# ----------------------------------------------------------------------------------------------
# generation


def generate_page_crops(
    n_pages: int,
    seed: int,
    data_dir: Path | str | None = None,
    *,
    settings: Settings | None = None,
    dpi: float = 300,
    on_page: ProgressFn | None = None,
    source: MnistTrainDigits | None = None,
) -> PageCrops:
    """Render, write, load, segment and label `n_pages` pages (one process). No cache."""
    settings = settings or get_settings()
    source = source or MnistTrainDigits.load(data_dir if data_dir is not None else settings.data_dir)
    t0 = time.process_time()
    crops: list[np.ndarray] = []
    labels: list[int] = []
    kinds: list[int] = []
    negs: list[np.ndarray] = []
    neg_kinds: list[int] = []
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="pagecrops-") as tmp:
        for i in range(n_pages):
            rng = np.random.default_rng([seed, i])
            kind = "cheque" if rng.random() < CHEQUE_SHARE else "form"
            style = STYLES["rough"] if rng.random() < ROUGH_SHARE else STYLES["scan"]
            fmt = "jpeg" if rng.random() < JPEG_SHARE else "png"
            img, truth = render_page(kind, dpi, rng, source, style)
            path = Path(tmp) / f"page.{'jpg' if fmt == 'jpeg' else 'png'}"
            write_pages(path, [img], fmt, dpi, rng, style)
            try:
                page = next(iter(load_pages(path, settings)))
                # Prepared and its fields found once: the cut and the string negatives use them.
                prepared = prepare_page(page, settings)
                regions = find_fields(prepared, settings)
                cut = segment_page(page, settings, prepared=prepared, regions=regions)
            except InputError as exc:  # a page segmentation refuses: nothing to learn from it
                log.warning("page %d skipped: %s", i, exc)
                counts["pages_skipped"] += 1
                continue
            page_labels, skipped = label_slots(cut, truth)
            counts["skipped_slots"] += skipped
            for c, lab, k in page_labels:
                crops.append(c)
                labels.append(lab)
                kinds.append(k)
                counts[KINDS[k]] += 1
            for c, k in string_negatives(prepared, regions, truth):
                negs.append(c)
                neg_kinds.append(k)
                counts[f"negative_{NEGATIVE_KINDS[k]}"] += 1
            counts["pages"] += 1
            if on_page:
                on_page(i + 1, n_pages)
    return PageCrops(
        crops=_stack(crops),
        labels=np.asarray(labels, np.int64),
        kinds=np.asarray(kinds, np.int8),
        negatives=_stack(negs),
        negative_kinds=np.asarray(neg_kinds, np.int8),
        mnist_indices=np.unique(np.asarray(source.drawn, np.int64)),
        counts=dict(counts),
        params=_params(n_pages, seed, dpi),
        seconds=time.process_time() - t0,
    )


def _stack(arrs: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrs).astype(np.uint8) if arrs else np.zeros((0, 28, 28), np.uint8)


def _covers(outer: Box, inner: Box, share: float) -> bool:
    """`outer` holds `inner`'s centre and is at least `share` of its width and height."""
    return centre_in(inner, outer) and outer[2] >= share * inner[2] and outer[3] >= share * inner[3]


def label_slots(cut: PageCut, truth: dict[str, Any]) -> tuple[list[tuple[np.ndarray, int, int]], int]:
    """(crop, label, kind) for every non-blank slot of a segmented page whose label is certain, and
    the number of slots left out because their truth is ambiguous (on two true digits without holding
    both centres; the whole of a digit that some fragment also falls on).
    """
    true_digits = [d for f in truth["fields"] for d in f["digits"] if d["label"] is not None]
    true_blanks = [d["bbox"] for f in truth["fields"] for d in f["digits"] if d["label"] is None]
    slots = [s for f in cut.fields for s in f.slots if not s.blank]
    on_slot = [[j for j, d in enumerate(true_digits) if matches(s.bbox, d["bbox"])] for s in slots]
    slots_on: list[list[int]] = [[] for _ in true_digits]
    for i, js in enumerate(on_slot):
        for j in js:
            slots_on[j].append(i)
    out: list[tuple[np.ndarray, int, int]] = []
    skipped = 0
    for i, (s, js) in enumerate(zip(slots, on_slot, strict=True)):
        if not js:
            blank = any(matches(s.bbox, b) for b in true_blanks)
            out.append((s.crop, 10, BLANK if blank else EXTRA))
        elif len(js) >= 2:
            held = sum(centre_in(true_digits[j]["bbox"], s.bbox) for j in js)
            if held >= 2:
                out.append((s.crop, 10, PAIR))
            else:
                skipped += 1
        elif slots_on[js[0]] == [i]:
            out.append((s.crop, int(true_digits[js[0]]["label"]), DIGIT))
        elif not _covers(s.bbox, true_digits[js[0]]["bbox"], WHOLE):
            out.append((s.crop, 10, PIECE))
        else:
            skipped += 1
    return out, skipped


def _neighbours(tfield: dict[str, Any]) -> list[tuple[int, int]]:
    """Positions of digits written next to each other (no separator or space between) in a string field."""
    text = tfield.get("text", tfield.get("value", ""))
    pairs, pos = [], 0
    for a, b in zip(text, text[1:], strict=False):
        if a.isdigit():
            if b.isdigit():
                pairs.append((pos, pos + 1))
            pos += 1
    return pairs


def string_negatives(
    prepared: PreparedPage, regions: Sequence[FieldRegion], truth: dict[str, Any]
) -> list[tuple[np.ndarray, int]]:
    """(crop, kind) synthetic non-digits from the string fields, cut like `refine_string`'s candidates.

    `regions`: the fields `find_fields` found on the `prepared` page (those the cut used).

    The string's pieces are those of the cut (`split_string` on the line-free field), before the
    model's second opinion. For two neighbouring true digits (no separator or space between) that
    each have exactly one piece of their own: the two pieces merged (UNION). For a wide true digit
    (not a 1 or a 7, wider than 0.6 of its height) with one piece: that piece cut at its middle
    column (`split.cut_at`, as the splitter cuts), and the half with less ink kept (HALF), when it is
    as tall as the splitter's parts must be and not a plain upright stroke. The heavier half is not
    used: it often still reads as the digit itself (the right half of a 3 is a narrow 3).
    """
    tfields = [f for f in truth["fields"] if f["kind"] == "string"]
    true_digits = [(fi, d) for fi, f in enumerate(tfields) for d in f["digits"] if d["label"] is not None]
    if not true_digits:
        return []
    out: list[tuple[np.ndarray, int]] = []
    for region in regions:
        if region.kind != "string":
            continue
        sp = string_pieces(prepared, region)  # as the cut splits it, before the model's second opinion
        pieces, ink, h = sp.pieces, sp.ink, sp.height
        if not pieces:
            continue
        boxes = [map_box(prepared.to_original, (sp.x0 + p.x0, sp.y0 + p.y0, p.w, p.h), prepared.width,
                         prepared.height) for p in pieces]  # fmt: skip
        on_piece = [[j for j, (_, d) in enumerate(true_digits) if matches(b, d["bbox"])] for b in boxes]
        own: dict[int, Piece] = {}  # true digit -> its one piece, holding no other true digit
        for j in range(len(true_digits)):
            ps = [i for i, js in enumerate(on_piece) if j in js]
            if len(ps) == 1 and on_piece[ps[0]] == [j]:
                own[j] = pieces[ps[0]]
        index = {(fi, d["position"]): j for j, (fi, d) in enumerate(true_digits)}
        for fi, f in enumerate(tfields):
            for a, b in _neighbours(f):
                ja, jb = index.get((fi, a)), index.get((fi, b))
                if ja in own and jb in own:
                    out.append((piece_crop(ink, merge_pieces(own[ja], own[jb])), UNION))
                    touching = _touching_pair(ink, own[ja], own[jb], overlap=max(1, round(0.06 * h)))
                    if touching is not None:
                        out.append((touching, TOUCH))
        hs = np.array([p.h for p in pieces], float)
        med_h = float(np.median(hs[hs >= 0.75 * hs.max()]))
        for j, p in own.items():
            d = true_digits[j][1]
            x, y, w, hh = d["bbox"]
            if d["label"] in NO_HALVES or w <= 0.6 * hh:
                continue
            parts = cut_at(p, p.w // 2)
            if len(parts) != 2:
                continue
            light = min(parts, key=lambda q: int(q.mask.sum()))
            if light.h >= 0.55 * med_h and light.w >= MIN_HALF_ASPECT * light.h:
                out.append((piece_crop(ink, light), HALF))
    return out


def _touching_pair(ink: np.ndarray, a: Piece, b: Piece, overlap: int) -> np.ndarray | None:
    """The MNIST-form crop of two neighbouring digits pushed together until their strokes touch: `b`
    (the right one) moved left, with its grey ink, by the gap between them plus `overlap` columns.
    Written strings often hold such pairs as one connected piece, which the model must not read as
    one digit. None when the two already touch or overlap."""
    d = b.x0 - a.x1 + overlap
    if b.x0 - a.x1 <= 0 or d >= b.x0:
        return None
    h, w = ink.shape
    moved_mask = np.zeros_like(b.mask)
    moved_mask[:, : w - d] = b.mask[:, d:]
    moved_ink = np.zeros_like(ink)
    moved_ink[:, : w - d] = np.where(b.mask, ink, 0)[:, d:]
    pair_ink = np.maximum(np.where(a.mask, ink, 0), moved_ink).astype(ink.dtype)
    mask = a.mask | moved_mask
    ys, xs = np.nonzero(mask)
    p = Piece(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, mask)
    return piece_crop(pair_ink, p)


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fill the page-crop cache and print its counts (JSON).")
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    w0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 25 == 0 or done == total:
            print(f"{done}/{total} pages, {time.perf_counter() - w0:.0f} s", file=sys.stderr)

    pc = page_crops(args.pages, args.seed, args.data_dir, cache_dir=args.cache_dir, on_page=progress)
    print(json.dumps({"crops": len(pc), "negatives": int(len(pc.negatives)), "counts": pc.counts,
                      "cpu_seconds": round(pc.seconds, 1), "wall_seconds": round(time.perf_counter() - w0, 1),
                      "from_cache": pc.from_cache}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
