"""Temperature scaling (fitted on the validation split), calibration error, and the review threshold."""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature T minimising the NLL of softmax(logits / T): golden-section search on log T."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy, count (for the diagram and the ECE)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    out: dict[str, list[float]] = {"lo": [], "hi": [], "confidence": [], "accuracy": [], "count": []}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        out["lo"].append(float(lo))
        out["hi"].append(float(hi))
        out["count"].append(float(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else 0.0)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else 0.0)
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (equal-width confidence bins)."""
    r = reliability(probs, labels, bins)
    n = max(len(labels), 1)
    return float(sum(c / n * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"], strict=True)))


def choose_threshold(probs: np.ndarray, labels: np.ndarray, max_error: float = 0.001) -> float:
    """The lowest confidence threshold whose accepted predictions have error <= max_error.

    Accepted = confidence >= threshold. Chosen on the validation split, reported on the test set.
    """
    conf = probs.max(1)
    wrong = probs.argmax(1) != labels
    order = np.argsort(-conf, kind="stable")
    cum_err = np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(cum_err <= max_error)[0]
    if ok.size == 0:
        return 1.0
    k = int(ok.max())
    # Accept everything down to conf[order[k]]; ties below it would change the error, so stay at it.
    return float(conf[order[k]])


COVERAGES = (0.90, 0.95, 0.98, 0.99, 0.995, 1.0)


def coverage_table(probs: np.ndarray, labels: np.ndarray, coverages: tuple[float, ...] = COVERAGES
                   ) -> list[dict[str, float]]:  # fmt: skip
    """Error on the most confident `coverage` fraction of the digits, and the threshold that accepts them."""
    conf = probs.max(1)
    wrong = probs.argmax(1) != labels
    order = np.argsort(-conf, kind="stable")
    rows = []
    for cov in coverages:
        k = max(1, int(round(cov * len(order))))
        acc = order[:k]
        rows.append({"coverage": cov, "accepted": k, "errors": int(wrong[acc].sum()),
                     "error_rate": float(wrong[acc].mean()), "threshold": float(conf[order[k - 1]])})  # fmt: skip
    return rows


def at_threshold(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    conf = probs.max(1)
    acc = conf >= threshold
    wrong = probs.argmax(1) != labels
    return {"threshold": threshold, "coverage": float(acc.mean()), "accepted": int(acc.sum()),
            "errors": int(wrong[acc].sum()), "error_rate": float(wrong[acc].mean()) if acc.any() else 0.0}  # fmt: skip
