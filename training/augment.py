"""Augmentation that makes MNIST digits look like digits cut from real scans.

Each augmented digit goes through: 2x upsampling, affine (rotation, anisotropic scale, shear,
shift), stroke thickness (erode/dilate), blur, noise, partial clipping at a crop edge, a fragment of
a box line at the crop border; the result is re-normalized by `digitreader.pipeline.normalize`, the
same function segmentation uses, so training sees what the runtime sees. About 25 % of the digits
are left untouched so the MNIST form itself stays well represented.

Plain numpy/OpenCV per digit (~0.1 ms each), so a 55k-digit epoch costs a few seconds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from digitreader.pipeline.normalize import normalize_ink

log = logging.getLogger(__name__)

_K3 = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class AugmentConfig:
    p_any: float = 0.75  # probability a digit is augmented at all
    rotation: float = 12.0  # degrees, uniform +-
    scale: tuple[float, float] = (0.85, 1.15)  # per axis (aspect changes survive normalization)
    shear: float = 0.25
    shift: float = 2.0  # pixels (of the 28x28 form) before re-normalization
    p_thickness: float = 0.35
    p_blur: float = 0.25
    p_noise: float = 0.25
    p_clip: float = 0.12
    p_line: float = 0.12


def _affine(rng: np.random.Generator, cfg: AugmentConfig, size: int) -> np.ndarray:
    angle = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
    sx, sy = rng.uniform(*cfg.scale), rng.uniform(*cfg.scale)
    sh = rng.uniform(-cfg.shear, cfg.shear)
    c, s = math.cos(angle), math.sin(angle)
    a = np.array([[c, -s], [s, c]]) @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([sx, sy])
    centre = np.array([size / 2, size / 2])
    shift = rng.uniform(-cfg.shift, cfg.shift, 2) * 2
    t = centre + shift - a @ centre
    return np.hstack([a, t[:, None]]).astype(np.float32)


def augment_one(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """One 28x28 uint8 MNIST-form digit -> an augmented, re-normalized 28x28 uint8 digit."""
    pad = 8
    big: np.ndarray = cv2.resize(img, (56, 56), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0)
    size = big.shape[0]  # 72
    ink: np.ndarray = cv2.warpAffine(
        big, _affine(rng, cfg, size), (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0
    )
    if rng.random() < cfg.p_thickness:
        k = _K3 if rng.random() < 0.7 else np.ones((5, 5), np.uint8)
        ink = cv2.dilate(ink, k) if rng.random() < 0.55 else cv2.erode(ink, _K3)
    if rng.random() < cfg.p_clip:
        ys, xs = np.nonzero(ink > 64)
        if ys.size:
            side = rng.integers(4)
            frac = rng.uniform(0.05, 0.18)
            if side == 0:
                ink[: int(ys.min() + frac * (ys.max() - ys.min())), :] = 0
            elif side == 1:
                ink[int(ys.max() - frac * (ys.max() - ys.min())) :, :] = 0
            elif side == 2:
                ink[:, : int(xs.min() + frac * (xs.max() - xs.min()))] = 0
            else:
                ink[:, int(xs.max() - frac * (xs.max() - xs.min())) :] = 0
    if rng.random() < cfg.p_line:
        # A short fragment of a box line left at the border of the crop, touching the digit's box.
        ys, xs = np.nonzero(ink > 64)
        if ys.size:
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
            thick = int(rng.integers(2, 5))
            side = rng.integers(4)
            if side < 2:  # horizontal line above/below, partial width
                y = y0 - int(rng.integers(0, 4)) if side == 0 else y1 + int(rng.integers(0, 4))
                a = int(rng.uniform(x0, (x0 + x1) / 2))
                b = int(rng.uniform((x0 + x1) / 2, x1 + 6))
                cv2.line(ink, (a, y), (b, y), 255.0, thick)
            else:  # vertical line left/right, short
                x = x0 - int(rng.integers(0, 4)) if side == 2 else x1 + int(rng.integers(0, 4))
                a = int(rng.uniform(y0 - 4, y0 + (y1 - y0) * 0.3))
                b = int(a + rng.uniform(0.15, 0.4) * (y1 - y0))
                cv2.line(ink, (x, a), (x, b), 255.0, thick)
    if rng.random() < cfg.p_blur:
        ink = cv2.GaussianBlur(ink, (0, 0), rng.uniform(0.6, 1.6))
    if rng.random() < cfg.p_noise:
        ink = ink + rng.normal(0, rng.uniform(5, 25), ink.shape).astype(np.float32)
        if rng.random() < 0.5:  # salt specks
            n = int(rng.integers(1, 6))
            ink[rng.integers(0, size, n), rng.integers(0, size, n)] = 255.0
        ink = np.clip(ink, 0, None)
        ink = np.where(ink < 30, 0, ink)  # the paper-level removal segmentation does
    ink = np.clip(ink, 0, 255).astype(np.uint8)
    return normalize_ink(ink)


def augment_batch(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """(N, 28, 28) uint8 -> augmented copy; each digit augmented with probability cfg.p_any."""
    out = images.copy()
    chosen = np.nonzero(rng.random(len(images)) < cfg.p_any)[0]
    for i in chosen:
        out[i] = augment_one(images[i], rng, cfg)
    return out


def shift_zoom_rotate(
    images: np.ndarray, rng: np.random.Generator, rot: float = 15, zoom: float = 0.15, shift: float = 0.15
) -> np.ndarray:
    """The Keras-style augmentation of the seed001 report: rotation, zoom, shift; no flips, no re-normalization."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        z = rng.uniform(1 - zoom, 1 + zoom)
        m: np.ndarray = cv2.getRotationMatrix2D((14, 14), rng.uniform(-rot, rot), z)
        m[:, 2] += rng.uniform(-shift, shift, 2) * 28
        out[i] = cv2.warpAffine(img, m, (28, 28), flags=cv2.INTER_LINEAR, borderValue=0)
    return out
