"""Training crops cut by our segmentation from generated pages of MNIST training digits (training/pagecrops.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitreader.pipeline.recognize import MODELS_DIR, Predictor
from digitreader.settings import Settings
from digitreader.types import DigitSlot, FieldCut, PageCut
from training.data import load_mnist, train_val_split
from training.pagecrops import (
    BLANK,
    DIGIT,
    EXTRA,
    PAIR,
    PIECE,
    TOUCH,
    UNION,
    MnistTrainDigits,
    PageCrops,
    label_slots,
    page_crops,
)
from training.run import SPLIT_SEED, VAL_SIZE, Splits, TrainConfig, epoch_data, epoch_size, load_splits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pagecrops")


@pytest.fixture(scope="module")
def three_pages(data_dir: Path, cache_dir: Path) -> PageCrops:
    settings = Settings(home=cache_dir / "home", data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]
    return page_crops(3, 11, data_dir, cache_dir=cache_dir, settings=settings)


def test_digit_crops_agree_with_the_shipped_model(three_pages: PageCrops) -> None:
    pc = three_pages
    digits = pc.kinds == DIGIT
    assert digits.sum() >= 60 and pc.counts["pages"] == 3
    assert np.all((pc.labels[digits] >= 0) & (pc.labels[digits] <= 9))
    assert np.all(pc.labels[~digits] == 10)  # pairs, pieces, strays: not a digit
    read = Predictor.load(MODELS_DIR / "default.onnx").predict(pc.crops[digits]).labels
    agree = float(np.mean(read == pc.labels[digits]))
    assert agree >= 0.9, agree
    # The same check fails for a labelling that is not aligned with the crops.
    shuffled = np.random.default_rng(0).permutation(pc.labels[digits])
    assert float(np.mean(read == shuffled)) < 0.5


def test_pages_hold_no_validation_digit(three_pages: PageCrops, data_dir: Path) -> None:
    train_idx, val_idx = train_val_split(60_000, VAL_SIZE, SPLIT_SEED)
    drawn = three_pages.mnist_indices
    assert len(drawn) >= 60
    assert not np.isin(drawn, val_idx).any()
    assert np.isin(drawn, train_idx).all()


def test_digit_source_returns_only_training_images_outside_validation(data_dir: Path) -> None:
    full = load_mnist("train", data_dir)
    assert full.labels is not None
    source = MnistTrainDigits.load(data_dir)
    rng = np.random.default_rng(5)
    asked = rng.integers(0, 10, 3000)
    images = [source(int(label), rng) for label in asked]
    drawn = np.asarray(source.drawn)
    assert len(drawn) == len(asked)
    _, val_idx = train_val_split(len(full), VAL_SIZE, SPLIT_SEED)
    assert not np.isin(drawn, val_idx).any()
    for img, i, label in zip(images, drawn, asked, strict=True):
        assert np.array_equal(img, full.images[i]) and full.labels[i] == label
    # With the validation indices allowed, the same draws would hit them: the exclusion is real.
    everything = MnistTrainDigits(full.images, full.labels, np.arange(len(full)))
    for label in asked:
        everything(int(label), rng)
    assert np.isin(np.asarray(everything.drawn), val_idx).any()


def test_union_negatives_are_made_and_trained_as_non_digits(three_pages: PageCrops, data_dir: Path) -> None:
    pc = three_pages
    assert (pc.negative_kinds == UNION).sum() >= 5
    assert pc.negatives.shape[1:] == (28, 28) and pc.negatives.dtype == np.uint8
    assert all(c.max() > 0 for c in pc.negatives)
    cfg = TrainConfig(limit=300, data_dir=str(data_dir), augment="scan", page_negatives="touching").resolved()
    base = load_splits(cfg)
    splits = Splits(base.train, base.val, base.val_nondigits, base.checksums, pc)
    x, y = epoch_data(cfg, splits, 0)
    assert len(x) == len(y) == epoch_size(cfg, splits) == 300 + 30 + len(pc) + len(pc.negatives)
    m = len(pc.negatives)
    assert np.array_equal(x[-m:], pc.negatives) and np.all(y[-m:] == 10)
    assert np.array_equal(y[-m - len(pc) : -m], pc.labels)
    # --page-negatives all / unions / none: touching pairs (and the halves, or all synthetic negatives)
    # are left out, the epoch size agrees; touching: every kind.
    for which, expected in (
        ("all", pc.negatives[pc.negative_kinds != TOUCH]),
        ("touching", pc.negatives),
        ("unions", pc.negatives[pc.negative_kinds == UNION]),
        ("none", pc.negatives[:0]),
    ):
        sub = dataclasses.replace(cfg, page_negatives=which)
        x, y = epoch_data(sub, splits, 0)
        assert len(x) == len(y) == epoch_size(sub, splits) == 300 + 30 + len(pc) + len(expected)
        assert np.array_equal(x[len(x) - len(expected) :], expected)


def test_second_call_reuses_the_cache(three_pages: PageCrops, data_dir: Path, cache_dir: Path) -> None:
    pages: list[int] = []
    settings = Settings(home=cache_dir / "home", data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]
    again = page_crops(3, 11, data_dir, cache_dir=cache_dir, settings=settings, on_page=lambda d, t: pages.append(d))
    assert pages == [] and again.from_cache
    assert np.array_equal(again.crops, three_pages.crops) and np.array_equal(again.labels, three_pages.labels)
    assert np.array_equal(again.negatives, three_pages.negatives) and again.counts == three_pages.counts
    other: list[int] = []
    page_crops(1, 12, data_dir, cache_dir=cache_dir, settings=settings, on_page=lambda d, t: other.append(d))
    assert other == [1]  # another seed is another cache entry, segmented


def _slot(position: int, bbox: tuple[int, int, int, int], blank: bool = False) -> DigitSlot:
    crop = np.full((28, 28), position + 1, np.uint8)  # tells the slots apart
    return DigitSlot(position=position, bbox=bbox, crop=crop, blank=blank)


def test_labelling_rule() -> None:
    truth = {"fields": [
        {"kind": "string", "digits": [
            {"position": 0, "bbox": [100, 100, 30, 40], "label": 3},   # cut right
            {"position": 1, "bbox": [140, 100, 30, 40], "label": 5},   # with 6: cut as one slot
            {"position": 2, "bbox": [175, 100, 30, 40], "label": 6},
            {"position": 3, "bbox": [220, 100, 30, 40], "label": 8},   # cut in two pieces
            {"position": 4, "bbox": [300, 100, 30, 40], "label": 2},   # whole, and a fragment on it
        ]},
        {"kind": "boxes", "digits": [
            {"position": 0, "bbox": [100, 300, 40, 50], "label": None},  # blank, called blank
            {"position": 1, "bbox": [140, 300, 40, 50], "label": None},  # blank, not called blank
            {"position": 2, "bbox": [180, 300, 40, 50], "label": 9},
        ]},
    ]}  # fmt: skip
    cut = PageCut(number=1, width=1000, height=1000, fields=(
        FieldCut("a", "string", (90, 90, 200, 60), (
            _slot(0, (101, 101, 28, 38)), _slot(1, (140, 100, 65, 40)), _slot(2, (220, 100, 14, 40)),
            _slot(3, (236, 100, 14, 40)), _slot(4, (262, 120, 6, 6)), _slot(8, (299, 100, 31, 40)),
            _slot(9, (322, 130, 5, 5)))),
        FieldCut("b", "boxes", (95, 295, 130, 60), (
            _slot(5, (100, 300, 40, 50), blank=True), _slot(6, (140, 300, 40, 50)), _slot(7, (180, 300, 40, 50)))),
    ))  # fmt: skip
    labelled, skipped = label_slots(cut, truth)
    got = [(int(c[0, 0]) - 1, label, kind) for c, label, kind in labelled]
    assert got == [(0, 3, DIGIT), (1, 10, PAIR), (2, 10, PIECE), (3, 10, PIECE), (4, 10, EXTRA), (9, 10, PIECE),
                   (6, 10, BLANK), (7, 9, DIGIT)]  # fmt: skip
    assert skipped == 1  # slot 8: the whole 2, which the fragment 9 also falls on


@pytest.mark.slow
def test_one_epoch_smoke_train_with_page_crops(data_dir: Path, tmp_path: Path) -> None:
    # The page crops make the epoch 3 batches of 64 longer: a one-cycle schedule sized for MNIST alone would
    # raise after its last step, so the run finishing proves the schedule counts them.
    env = {**os.environ, "DIGITREADER_HOME": str(tmp_path / "home"), "DIGITREADER_DATA_DIR": str(data_dir)}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "digitreader", "train", "--epochs", "1", "--limit", "2000",
                           "--page-crops", "2", "--batch-size", "64", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["page_crops"] == 2
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert list((tmp_path / "home" / "cache" / "pagecrops").glob("pagecrops-*-p2-s1-*.npz"))
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert "2 generated pages, seed 1" in json.loads(meta["training_data"])["page_crops"]


def test_touching_pairs_are_two_digits_pushed_together(three_pages: PageCrops) -> None:
    """`touch` negatives: two neighbouring digits moved together until their strokes meet, so the
    crop is mostly one connected piece, where a union of two neighbours has paper between them."""
    import cv2

    def one_piece(c: np.ndarray) -> bool:
        _, _, stats, _ = cv2.connectedComponentsWithStats((c > 60).astype(np.uint8))
        return sum(1 for a in stats[1:, cv2.CC_STAT_AREA] if a >= 8) == 1

    pc = three_pages
    touch = pc.negatives[pc.negative_kinds == TOUCH]
    unions = pc.negatives[pc.negative_kinds == UNION]
    assert len(touch) >= 3 and touch.shape[1:] == (28, 28) and all(c.max() > 0 for c in touch)
    touch_share = np.mean([one_piece(c) for c in touch])
    union_share = np.mean([one_piece(c) for c in unions])
    assert touch_share >= 0.6 and touch_share > union_share + 0.3, (touch_share, union_share)
