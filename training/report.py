"""The evaluation report of a run: report.json, report.md and PNG plots, from the *exported* ONNX model.

Everything measured on the MNIST test set is measured with onnxruntime on the exported file, i.e.
what the runtime will see; the temperature and the threshold come from the validation split.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np

from training import calibrate, export
from training.data import Dataset
from training.nondigits import KINDS, generate_nondigits

log = logging.getLogger(__name__)

NONDIGIT_TEST_SEED = 9_000_001
NONDIGIT_TEST_N = 5000


def per_class(pred: np.ndarray, labels: np.ndarray, n: int) -> list[dict[str, float]]:
    rows = []
    for c in range(n):
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"class": c, "precision": p, "recall": r, "f1": f1, "support": int((labels == c).sum())})
    return rows


def confusion(pred: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((10, n), np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def _plots(out: Path, history: list[dict[str, float]], cm: np.ndarray, test: Dataset, pred: np.ndarray,
           rel_before: dict[str, list[float]], rel_after: dict[str, list[float]]) -> list[str]:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # Confusion matrix.
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set_xticks(range(cm.shape[1]), [str(i) for i in range(10)] + (["x"] if cm.shape[1] == 11 else []))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted (x = not a digit)")
    ax.set_ylabel("true")
    ax.set_title("MNIST test confusion matrix")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=80)
    plt.close(fig)
    files.append("confusion.png")
    # Curves.
    if history:
        ep = [h["epoch"] for h in history]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
        a1.plot(ep, [h["train_loss"] for h in history], label="train")
        a1.plot(ep, [h["val_loss"] for h in history], label="validation")
        a1.set_xlabel("epoch")
        a1.set_ylabel("loss")
        a1.legend()
        a2.plot(ep, [h["train_acc"] for h in history], label="train (augmented)")
        a2.plot(ep, [h["val_acc"] for h in history], label="validation")
        a2.set_xlabel("epoch")
        a2.set_ylabel("accuracy")
        a2.legend()
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=80)
        plt.close(fig)
        files.append("curves.png")
    # Misclassified montage.
    assert test.labels is not None
    wrong = np.nonzero(pred != test.labels)[0][:80]
    if wrong.size:
        cols = 10
        rows = -(-len(wrong) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.05))
        for k, ax in enumerate(np.atleast_1d(axes).ravel()):
            ax.axis("off")
            if k < len(wrong):
                i = wrong[k]
                ax.imshow(test.images[i], cmap="gray_r")
                p = "x" if pred[i] == 10 else str(pred[i])
                ax.set_title(f"{test.labels[i]}->{p}", fontsize=7, pad=1)
        fig.suptitle("misclassified test digits (true->predicted)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "misclassified.png", dpi=60)
        plt.close(fig)
        files.append("misclassified.png")
    # Reliability diagram.
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for rel, name in ((rel_before, "T = 1"), (rel_after, "fitted T")):
        m = np.asarray(rel["count"]) > 0
        ax.plot(np.asarray(rel["confidence"])[m], np.asarray(rel["accuracy"])[m], "o-", label=name, ms=3)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (validation)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=80)
    plt.close(fig)
    files.append("reliability.png")
    return files


def write_report(out: Path, *, onnx_path: Path, cfg: Any, history: list[dict[str, float]], val_logits: np.ndarray,
                 val_labels: np.ndarray, temperature: float, threshold: float, test: Dataset,
                 parity_max_abs_diff: float, throughput_seconds: float = 2.0) -> dict[str, Any]:  # fmt: skip
    """Measure the exported model on MNIST test and held-out non-digits; write report.json and report.md."""
    assert test.labels is not None
    logits = export.onnx_logits(onnx_path, test.images)
    n_cls = logits.shape[1]
    probs = calibrate.softmax(logits, temperature)
    pred = probs.argmax(1)
    acc = float((pred == test.labels).mean())
    cm = confusion(pred, test.labels, n_cls)
    classes = per_class(pred, test.labels, 10)
    rel_before = calibrate.reliability(calibrate.softmax(val_logits, 1.0), val_labels)
    rel_after = calibrate.reliability(calibrate.softmax(val_logits, temperature), val_labels)
    ece = {
        "validation_before": calibrate.ece(calibrate.softmax(val_logits, 1.0), val_labels),
        "validation_after": calibrate.ece(calibrate.softmax(val_logits, temperature), val_labels),
        "test_before": calibrate.ece(calibrate.softmax(logits, 1.0), test.labels),
        "test_after": calibrate.ece(probs, test.labels),
    }
    coverage = calibrate.coverage_table(probs, test.labels)
    at_thr = calibrate.at_threshold(probs, test.labels, threshold)
    nondigit: dict[str, Any] = {"available": n_cls == 11}
    if n_cls == 11:
        nd, kinds = generate_nondigits(NONDIGIT_TEST_N, NONDIGIT_TEST_SEED, return_kinds=True)
        nd_pred = export.onnx_logits(onnx_path, nd).argmax(1)
        rejected = nd_pred == 10
        nondigit.update({"n": NONDIGIT_TEST_N, "seed": NONDIGIT_TEST_SEED, "rejected": float(rejected.mean()),
                         "by_kind": {k: float(rejected[kinds == i].mean()) for i, k in enumerate(KINDS)}})  # fmt: skip
        nondigit["digits_rejected_on_test"] = float((pred == 10).mean())
    # on real digits (the first test images): a cascade's speed depends on how sure its reader is
    speed = {f"batch_{b}": export.throughput(onnx_path, b, throughput_seconds * 2, images=test.images[:b])
             for b in (1, 256)}  # fmt: skip
    speed_cpu = {f"batch_{b}": export.throughput_cpu(onnx_path, b, throughput_seconds, images=test.images[:b])
                 for b in (1, 256)}  # fmt: skip
    from digitreader.hashing import sha256_file

    result: dict[str, Any] = {
        "arch": cfg.arch,
        "version": cfg.version,
        "epochs": len(history),
        "config": {k: v for k, v in vars(cfg).items()},
        "mnist_test_accuracy": acc,
        "mnist_test_errors": int((pred != test.labels).sum()),
        "per_class": classes,
        "confusion": cm.tolist(),
        "temperature": temperature,
        "ece": ece,
        "threshold": threshold,
        "threshold_rule": "lowest confidence with error <= 0.1 % on accepted validation digits",
        "at_threshold_test": at_thr,
        "coverage_table_test": coverage,
        "nondigits": nondigit,
        "throughput_digits_per_s_1_thread": speed,
        "throughput_digits_per_cpu_second_1_thread": speed_cpu,
        "parity_max_abs_diff": parity_max_abs_diff,
        "onnx_sha256_before_metadata_update": sha256_file(onnx_path),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; onnxruntime CPU, 1 thread",
        "history": history,
    }
    result["plots"] = _plots(out, history, cm, test, pred, rel_before, rel_after)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(render_md(result))
    return result


def render_md(r: dict[str, Any]) -> str:
    pct = lambda x: f"{100 * x:.2f} %"  # noqa: E731
    lines = [
        f"# Model report: {r['arch']} ({r['version']}), {r['epochs']} epochs",
        "",
        f"- MNIST test accuracy: **{pct(r['mnist_test_accuracy'])}** ({r['mnist_test_errors']} errors of 10,000)",
        f"- Temperature (fitted on validation): {r['temperature']:.3f}; ECE validation "
        f"{r['ece']['validation_before']:.4f} -> {r['ece']['validation_after']:.4f}, test "
        f"{r['ece']['test_before']:.4f} -> {r['ece']['test_after']:.4f}",
        f"- Review threshold (validation, error on accepted <= 0.1 %): {r['threshold']:.4f}; on test it accepts "
        f"{pct(r['at_threshold_test']['coverage'])} with error {pct(r['at_threshold_test']['error_rate'])} "
        f"({r['at_threshold_test']['errors']} errors)",
    ]
    nd = r["nondigits"]
    if nd.get("available"):
        lines.append(f"- Held-out non-digit crops rejected: **{pct(nd['rejected'])}** of {nd['n']} "
                     f"(seed {nd['seed']}); "
                     + ", ".join(f"{k} {pct(v)}" for k, v in nd["by_kind"].items()))  # fmt: skip
    else:
        lines.append("- Non-digit output: none (a 10-class reference model)")
    s = r["throughput_digits_per_s_1_thread"]
    lines += [
        f"- Throughput (onnxruntime CPU, 1 thread): batch 1 {s['batch_1']:,.0f} digits/s, batch 256 "
        f"{s['batch_256']:,.0f} digits/s wall-clock (best window; {r['machine']}); per CPU-second of one core: "
        + ", ".join(
            f"{k.replace('_', ' ')} {v:,.0f}" for k, v in r.get("throughput_digits_per_cpu_second_1_thread", {}).items()
        ),
        f"- PyTorch vs onnxruntime max abs logit difference: {r['parity_max_abs_diff']:.2e}",
        "",
        "## Accuracy-coverage (MNIST test, calibrated confidence)",
        "",
        "| coverage | accepted | errors | error on accepted | threshold |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["coverage_table_test"]:
        lines.append(f"| {pct(row['coverage'])} | {row['accepted']} | {row['errors']} "
                     f"| {100 * row['error_rate']:.3f} % "
                     f"| {row['threshold']:.4f} |")  # fmt: skip
    lines += ["", "## Per class (MNIST test)", "", "| digit | precision | recall | F1 | support |",
              "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for c in r["per_class"]:
        lines.append(f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    lines += ["", "## Training", "", "| epoch | train loss | train acc | val loss | val acc | lr | s |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for h in r["history"]:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_acc']:.4f} | {h['val_loss']:.4f} | "
                     f"{h['val_acc']:.4f} | {h['lr']:.2e} | {h['seconds']:.0f} |")  # fmt: skip
    lines += [""] + [f"![{p}]({p})" for p in r.get("plots", [])] + [""]
    return "\n".join(lines)
